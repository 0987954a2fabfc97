"""The Open Inference Protocol over gRPC beside V2 REST and /predict, on one `bentoml serve`.

    python -m bench.grpc_vs_rest [--seconds 5]    # the model: sklearn_model:latest in $BENTOML_HOME

c=1: one row per call, one call at a time (median and p99 ms). c=64: 64 callers at once (calls/s).
1,000-row batches with raw contents (gRPC), binary tensors (REST V2) and JSON (/predict_batch), 4 callers: rows/s.
Every loop is bounded by time; the clients run in this process, on the same machine as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from sklearn.datasets import load_breast_cancer

from sklearn_service.v2_grpc import open_inference_grpc_pb2 as pb
from sklearn_service.v2_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from harness.serving import Server, free_port

X = load_breast_cancer().data


def grpc_request(rows: np.ndarray) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="sklearn_model")
    message.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    message.raw_input_contents.append(rows.astype("<f8").tobytes())
    return message


def rest_binary(rows: np.ndarray) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                                     "parameters": {"binary_data_size": rows.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + rows.astype("<f8").tobytes(), {"Inference-Header-Content-Length": str(len(header))}


async def loop(call, seconds: float, callers: int) -> list[float]:
    """Calls `call()` from `callers` tasks for `seconds`; the latency of each call."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller():
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies


async def measure(server: Server, seconds: float) -> dict:
    one, batch = X[:1], np.resize(X, (1000, 30))
    channel = grpc.aio.insecure_channel(server.grpc)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    single, thousand = grpc_request(one), grpc_request(batch)
    v2_url = server.url + "/v2/models/sklearn_model/infer"
    v2_one = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": one.tolist()}],
              "outputs": [{"name": "predict"}]}
    v2_batch, v2_headers = rest_binary(batch)
    results = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        async def rest(url, **kwargs):
            async with http.post(url, **kwargs) as response:
                assert response.status == 200, await response.text()
                await response.read()

        calls = {
            "gRPC ModelInfer": lambda: stub.ModelInfer(single),
            "REST V2 infer": lambda: rest(v2_url, json=v2_one),
            "/predict": lambda: rest(server.url + "/predict", json={"features": one[0].tolist()}),
        }
        for name, call in calls.items():
            await loop(call, 1, 1)  # warm-up
            c1 = np.array(await loop(call, seconds, 1)) * 1000
            c64 = await loop(call, seconds, 64)
            results[name] = {"c1_median_ms": round(float(np.median(c1)), 2),
                             "c1_p99_ms": round(float(np.percentile(c1, 99)), 2),
                             "c64_calls_per_s": round(len(c64) / seconds)}
        for name, call in {"gRPC raw 1,000 rows": lambda: stub.ModelInfer(thousand),
                           "REST V2 binary 1,000 rows": lambda: rest(v2_url, data=v2_batch, headers=v2_headers),
                           "/predict_batch 1,000 rows": lambda: rest(server.url + "/predict_batch",
                                                                      json={"instances": batch.tolist()})}.items():
            await loop(call, 1, 4)
            done = await loop(call, seconds, 4)
            results[name] = {"rows_per_s": round(1000 * len(done) / seconds),
                             "median_ms": round(float(np.median(done)) * 1000, 1)}
    await channel.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    home = os.environ.get("BENTOML_HOME", os.path.expanduser("~/bentoml"))
    grpc_port = free_port()
    server = Server(Path(home), env={"GRPC_PORT": str(grpc_port)})
    server.grpc = f"127.0.0.1:{grpc_port}"
    with server:
        print(json.dumps(asyncio.run(measure(server, args.seconds)), indent=2))


if __name__ == "__main__":
    main()
