"""Third-party gRPC clients of the Open Inference Protocol, each run in a process of its own:
`python -m harness.grpc_clients` reads a call as JSON on stdin and writes what the client read as JSON.

tritonclient.grpc and KServe register the protocol's messages (package `inference`) in protobuf's
default descriptor pool, and a process that imports both fails ("duplicate symbol"): so does the
test process, which imports KServe for its REST client (tests/test_third_party.py).

A call: {"client": "triton" | "kserve", "address": "host:port", "model": ..., "version": "",
"inputs": [{"name", "datatype", "shape", "values"}], "outputs": [names] | null, "typed": bool
(KServe only: typed contents instead of raw), "headers": {...}, "id": "..."}, or with
"health": true, the client's liveness and readiness calls instead of an inference.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np


def _array(spec: dict, to_dtype) -> np.ndarray:
    dtype = object if spec["datatype"] == "BYTES" else to_dtype(spec["datatype"])
    return np.array(spec["values"], dtype=dtype).reshape(spec["shape"])


def _listed(array: np.ndarray) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]


def triton(call: dict) -> dict:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(call["address"])
    headers = call.get("headers")
    try:
        if call.get("health"):
            return {"live": client.is_server_live(headers=headers), "ready": client.is_server_ready(headers=headers),
                    "model_ready": client.is_model_ready(call["model"], call.get("version", ""), headers=headers),
                    "metadata": json.loads(json.dumps(
                        client.get_model_metadata(call["model"], headers=headers, as_json=True)))}
        inputs = []
        for spec in call["inputs"]:
            tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(_array(spec, grpcclient.triton_to_np_dtype))  # raw: its only form
            inputs.append(tensor)
        outputs = None if call.get("outputs") is None else [grpcclient.InferRequestedOutput(n) for n in call["outputs"]]
        result = client.infer(call["model"], inputs, model_version=call.get("version", ""), outputs=outputs,
                              request_id=call.get("id", ""), headers=headers, client_timeout=30)
    except InferenceServerException as exc:
        return {"error": {"code": str(exc.status()).removeprefix("StatusCode."), "message": exc.message()}}
    finally:
        client.close()
    response = result.get_response()
    return {"id": response.id, "model_version": response.model_version, "raw": len(response.raw_output_contents) > 0,
            "outputs": {o.name: {"datatype": o.datatype, "shape": list(o.shape),
                                 "data": _listed(result.as_numpy(o.name))} for o in response.outputs}}


async def kserve(call: dict) -> dict:
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.infer_type import to_np_dtype

    client = InferenceGRPCClient(call["address"], timeout=30, retries=0)
    headers = tuple((call.get("headers") or {}).items())
    try:
        if call.get("health"):
            return {"live": await client.is_server_live(headers=headers),
                    "ready": await client.is_server_ready(headers=headers),
                    "model_ready": await client.is_model_ready(call["model"], headers=headers)}
        inputs = []
        for spec in call["inputs"]:
            tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(_array(spec, to_np_dtype), binary_data=not call.get("typed"))
            inputs.append(tensor)
        request = InferRequest(call["model"], inputs, request_id=call.get("id"), model_version=call.get("version"))
        response = await client.infer(request, headers=headers)
    except grpc.RpcError as exc:
        return {"error": {"code": exc.code().name, "message": exc.details()}}
    finally:
        await client.close()
    return {"id": response.id, "model_version": response.model_version,
            "outputs": {o.name: {"datatype": o.datatype, "shape": list(o.shape), "data": _listed(o.as_numpy())}
                        for o in response.outputs}}


if __name__ == "__main__":
    request = json.load(sys.stdin)
    answer = triton(request) if request["client"] == "triton" else asyncio.run(kserve(request))
    json.dump(answer, sys.stdout)
