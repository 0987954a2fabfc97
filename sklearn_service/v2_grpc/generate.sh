#!/usr/bin/env bash
# Regenerates open_inference_grpc_pb2.py and open_inference_grpc_pb2_grpc.py from the .proto
# (`make grpc-code`). grpcio-tools goes in a throwaway venv: its protobuf must match the runtime's
# major version (6.x: grpcio-tools 1.81.1), as the generated code checks it at import.
#
# The messages are registered in a descriptor pool of their own, not protobuf's default one:
# tritonclient and KServe register the same protocol (package `inference`) in the default pool,
# and a second registration of a symbol there fails at import, so a process could not hold both.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=${GRPC_TOOLS_VENV:-/tmp/grpcio-tools-1.81.1}
[ -x "$TOOLS/bin/python" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet grpcio-tools==1.81.1; }
"$TOOLS/bin/python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    sklearn_service/v2_grpc/open_inference_grpc.proto
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' \
    sklearn_service/v2_grpc/open_inference_grpc_pb2.py
grep -q '^POOL = ' sklearn_service/v2_grpc/open_inference_grpc_pb2.py
sed -i 's/^DESCRIPTOR: _descriptor.FileDescriptor$/from google.protobuf import descriptor_pool as _descriptor_pool\n\nPOOL: _descriptor_pool.DescriptorPool\nDESCRIPTOR: _descriptor.FileDescriptor/' \
    sklearn_service/v2_grpc/open_inference_grpc_pb2.pyi
grep -q '^POOL: ' sklearn_service/v2_grpc/open_inference_grpc_pb2.pyi
# generated: kept out of linters and type checks
for generated in sklearn_service/v2_grpc/open_inference_grpc_pb2.py sklearn_service/v2_grpc/open_inference_grpc_pb2_grpc.py; do
    sed -i '1a # ruff: noqa\n# mypy: ignore-errors' "$generated"
done
