"""Code generated from open_inference_grpc.proto: the Open Inference Protocol's gRPC service,
copied unchanged from github.com/kserve/open-inference-protocol (specification/protocol/, commit
d49cc23f89d7), Copyright 2023 The KServe Authors, under the Apache License 2.0 (LICENSE here).

Regenerate with `make grpc-code` (generate.sh); do not edit the *_pb2*.py files.
"""
