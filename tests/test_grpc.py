"""The Open Inference Protocol over gRPC through a real `bentoml serve`: the real tritonclient.grpc (raw
contents) and KServe's InferenceGRPCClient (raw and typed), each in a process of its own (harness/grpc_clients.py);
the health service and reflection; bad requests answered with REST's message and the matching gRPC code; the
API key; a mixed-type model by feature; metrics, payload log and 2 API workers; drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sklearn_service import grpc_inference, grpc_lifecycle
from sklearn_service.errors import Overloaded, runner_failure
from sklearn_service.v2_grpc import open_inference_grpc_pb2 as pb
from sklearn_service.v2_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from harness.mixed_data import FEATURES
from harness.prometheus_text import delta, scrape
from harness.serving import ROOT, Server, write_config

ROWS = 40
ROW = [1.0] * 30


def run_client(server, client: str, **call) -> dict:
    """One call of a third-party client (harness/grpc_clients.py) in a child process."""
    done = subprocess.run([sys.executable, "-m", "harness.grpc_clients"], cwd=ROOT, capture_output=True, timeout=120,
                          check=False,
                          input=json.dumps({"client": client, "address": server.grpc, **call}), text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def tensor(values: np.ndarray, datatype: str = "FP64", name: str = "input-0") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(values.shape), "values": values.tolist()}


def predict_batch(server, rows: list) -> list:
    response = requests.post(server.url + "/predict_batch", json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@pytest.fixture(scope="module")
def model(trained):
    name, version = trained["tag"].split(":")
    return {"name": name, "version": version, "pipeline": trained["pipeline"]}


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(model, shape, values, datatype="FP64", raw=True, **fields) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model["name"], **fields)
    tensor_in = message.inputs.add(name="input-0", datatype=datatype, shape=shape)
    if raw:
        message.raw_input_contents.append(np.asarray(values, dtype=np.float64).tobytes())
    else:
        tensor_in.contents.fp64_contents.extend(values)
    return message


# ---- real clients --------------------------------------------------------------------------------

@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_tritonclient_raw_inference_equals_predict_batch(server, model, cancer, datatype):
    X = cancer["X"][:ROWS].astype(np.float32 if datatype == "FP32" else np.float64)
    answer = run_client(server, "triton", model=model["name"], inputs=[tensor(X, datatype)], id="req-7")
    assert answer["raw"] and answer["id"] == "req-7" and answer["model_version"] == model["version"]
    assert answer["outputs"]["predict"]["data"] == predict_batch(server, X.astype(np.float64).tolist())
    proba = answer["outputs"]["predict_proba"]
    assert proba["shape"] == [ROWS, 2] and proba["datatype"] == "FP64"
    assert proba["data"] == pytest.approx(model["pipeline"].predict_proba(X.astype(np.float64)).ravel())


def test_tritonclient_picks_outputs_and_versions(server, model, cancer):
    X = cancer["X"][:3]
    answer = run_client(server, "triton", model=model["name"], version=model["version"], inputs=[tensor(X)],
                        outputs=["predict"])
    assert list(answer["outputs"]) == ["predict"]
    assert answer["outputs"]["predict"]["data"] == predict_batch(server, X.tolist())
    wrong = run_client(server, "triton", model=model["name"], version="v0", inputs=[tensor(X)])
    assert wrong["error"] == {"code": "NOT_FOUND", "message": f"no model '{model['name']}' version 'v0' is served "
                                                              f"({model['name']} is served as {model['name']}:"
                                                              f"{model['version']}); served models: {model['name']}"}


@pytest.mark.parametrize("typed", [False, True])
def test_kserve_client_raw_and_typed_equals_predict_batch(server, model, cancer, typed):
    X = cancer["X"][ROWS:2 * ROWS]
    answer = run_client(server, "kserve", model=model["name"], inputs=[tensor(X)], typed=typed, id="k-1")
    assert answer["id"] == "k-1"
    assert answer["outputs"]["predict"]["data"] == predict_batch(server, X.tolist())
    assert answer["outputs"]["predict_proba"]["data"] == pytest.approx(model["pipeline"].predict_proba(X).ravel())


def test_client_health_and_metadata(server, model):
    for client in ("triton", "kserve"):
        answer = run_client(server, client, model=model["name"], health=True)
        assert answer["live"] and answer["ready"] and answer["model_ready"], (client, answer)
    meta = run_client(server, "triton", model=model["name"], health=True)["metadata"]
    assert meta["versions"] == [model["version"]] and meta["platform"] == "scikit-learn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "30"]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba", "explanation"]


def test_explanation_is_answered_when_named(stub, model, trained, cancer):
    """As over REST: an explanation is an output of its own, answered only when named, equal to /explain."""
    from sklearn_service.explain import Explainer
    from sklearn_service.signature import Signature

    X = cancer["X"][:3]
    unnamed = stub.ModelInfer(infer_request(model, [3, 30], X.ravel().tolist()))
    assert [o.name for o in unnamed.outputs] == ["predict", "predict_proba"]
    message = infer_request(model, [3, 30], X.ravel().tolist(), raw=False)
    message.outputs.add(name="predict")
    message.outputs.add(name="explanation")
    answer = stub.ModelInfer(message)
    assert [(o.name, list(o.shape)) for o in answer.outputs] == [("predict", [3]), ("explanation", [3, 30])]
    served = np.array(answer.outputs[1].contents.fp64_contents).reshape(3, 30)
    signature = Signature.from_dict(trained["metadata"]["signature"])
    expected = Explainer.for_pipeline(model["pipeline"], signature).explain(X).contributions
    np.testing.assert_allclose(served, expected, atol=1e-9)


def test_typed_answers_for_typed_requests(stub, server, model, cancer):
    X = cancer["X"][:5]
    answer = stub.ModelInfer(infer_request(model, [5, 30], X.ravel().tolist(), raw=False, id="t"))
    assert not answer.raw_output_contents and answer.id == "t"
    assert list(answer.outputs[0].contents.fp64_contents) == predict_batch(server, X.tolist())


def test_concurrent_calls_each_get_their_own_rows_answers(server, model, cancer):
    """64 calls at once, coalesced into shared runner calls: each answer is its own rows'."""
    picks = [cancer["X"][i:i + 1 + i % 3] for i in range(64)]

    async def calls():
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(*(stub.ModelInfer(infer_request(model, list(rows.shape), rows.ravel()))
                                          for rows in picks))

    for rows, answer in zip(picks, asyncio.run(calls())):
        assert np.frombuffer(answer.raw_output_contents[0]).tolist() == model["pipeline"].predict(rows).tolist()
        assert np.frombuffer(answer.raw_output_contents[1]).reshape(-1, 2) == \
            pytest.approx(model["pipeline"].predict_proba(rows))


# ---- health and reflection -------------------------------------------------------------------------

def test_health_service_answers_for_the_server_and_the_protocol(server):
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "liveness"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(server):
    with grpc.insecure_channel(server.grpc) as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")]
        listed, described, health = list(reflect.ServerReflectionInfo(iter(asks)))
    assert {s.name for s in listed.list_services_response.service} == {
        "inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert described.file_descriptor_response.file_descriptor_proto and \
        health.file_descriptor_response.file_descriptor_proto


# ---- bad requests: REST's message, the matching code -------------------------------------------------

def json_body(shape, data, datatype="FP64", **extra) -> dict:
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}], **extra}


def bad_request_cases(model):
    """(gRPC request, the REST path and JSON body of the same mistake)."""
    path = f"/v2/models/{model['name']}/infer"
    words = pb.ModelInferRequest(model_name=model["name"])
    words.inputs.add(name="input-0", datatype="BYTES", shape=[1, 30]).contents.bytes_contents.extend([b"x"] * 30)
    unknown_output = infer_request(model, [1, 30], ROW)
    unknown_output.outputs.add(name="classes")
    return [
        (infer_request(model, [1, 29], ROW[:29]), path, json_body([1, 29], ROW[:29])),
        (infer_request(model, [2, 30], ROW, raw=False), path, json_body([2, 30], ROW)),
        (infer_request(model, [1, 30], [float("inf")] * 30, raw=False), None, None),
        (infer_request(model, [0, 30], [], raw=False), path, json_body([0, 30], [])),
        (infer_request(model, [1001, 30], ROW * 1001), path, json_body([1001, 30], [ROW] * 1001)),
        (words, path, json_body([1, 30], ["x"] * 30, "BYTES")),
        (unknown_output, path, json_body([1, 30], ROW, outputs=[{"name": "classes"}])),
        (infer_request({"name": "nope"}, [1, 30], ROW), "/v2/models/nope/infer", json_body([1, 30], ROW)),
        (infer_request(model, [1, 30], ROW, model_version="v0"), f"/v2/models/{model['name']}/versions/v0/infer",
         json_body([1, 30], ROW)),
    ]


def test_bad_requests_get_the_rest_message_and_the_matching_code(stub, server, model):
    for message, path, body in bad_request_cases(model):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(message)
        error = refused.value
        if path is None:  # no JSON spelling: infinity is not JSON
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a finite number" in error.details()
            continue
        rest = requests.post(server.url + path, json=body, timeout=30)
        assert (error.code(), error.details()) == (grpc_inference.STATUS_CODES[rest.status_code], rest.json()["error"])
        assert dict(error.trailing_metadata())["reason"]


@pytest.mark.parametrize("failure, code, message, trailing", [
    (Overloaded("busy"), grpc.StatusCode.UNAVAILABLE, "the service is overloaded, retry shortly",
     {"reason": "overloaded", "retry-after": "1"}),
    (ConnectionError("refused"), grpc.StatusCode.UNAVAILABLE, "the model is temporarily unavailable, retry shortly",
     {"reason": "runner_unavailable", "retry-after": "1"}),
    (ValueError("bug"), grpc.StatusCode.INTERNAL, "the model failed to answer; see the server log",
     {"reason": "runner_error"}),
])
def test_runner_trouble_maps_to_unavailable_with_a_retry_hint_or_internal(failure, code, message, trailing):
    class Context:  # what grpc.aio's abort is given
        async def abort(self, *ended, trailing_metadata=()):
            self.ended = (*ended, dict(trailing_metadata))
            raise grpc.aio.AbortError()

    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(grpc_inference.abort(context, runner_failure(failure, logging.getLogger("test"))))
    assert context.ended == (code, message, trailing)


def test_messages_over_max_body_bytes_are_refused_by_grpc(stub, model):
    big = infer_request(model, [40000, 30], np.ones(40000 * 30))  # 9.6 MB > app.max_body_bytes (8 MiB)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(big)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_models_in_metadata_and_ready_are_not_found(stub, model):
    for call, message in ((stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
                          (stub.ModelReady, pb.ModelReadyRequest(name=model["name"], version="v0"))):
        with pytest.raises(grpc.RpcError) as refused:
            call(message)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "is served" in refused.value.details()


def test_grpc_requests_count_in_the_service_metrics(stub, server, model, cancer):
    before = scrape(server.url)
    stub.ModelInfer(infer_request(model, [3, 30], cancer["X"][:3].ravel()))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(infer_request(model, [2, 29], [1.0] * 58))
    after = scrape(server.url)
    assert delta(before, after, "ml_predictions_total", endpoint="grpc:ModelInfer", outcome="success") == 3
    assert delta(before, after, "ml_predictions_total", endpoint="grpc:ModelInfer", outcome="rejected") == 2
    assert delta(before, after, "ml_rejected_requests_total", endpoint="grpc:ModelInfer", reason="wrong_shape") == 1


# ---- API key ---------------------------------------------------------------------------------------

def test_api_key_guards_grpc_but_not_its_health(keyed_server, model, cancer):
    keyed, key = keyed_server, keyed_server.api_key
    with grpc.insecure_channel(keyed.grpc) as channel:
        inference = pb_grpc.GRPCInferenceServiceStub(channel)
        assert inference.ServerLive(pb.ServerLiveRequest()).live
        assert inference.ServerReady(pb.ServerReadyRequest()).ready
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        message = infer_request(model, [2, 30], cancer["X"][:2].ravel())
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", key),)):
            for call, request in ((inference.ModelInfer, message), (inference.ModelMetadata,
                                                                    pb.ModelMetadataRequest(name=model["name"]))):
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "missing or wrong API key" in refused.value.details()
        answer = inference.ModelInfer(message, metadata=(("authorization", f"bearer {key}"),))
        expected = model["pipeline"].predict(cancer["X"][:2]).tolist()
        assert np.frombuffer(answer.raw_output_contents[0]).tolist() == expected
        triton = run_client(keyed, "triton", model=model["name"], inputs=[tensor(cancer["X"][:2])],
                            headers={"authorization": f"Bearer {key}"})
        assert triton["outputs"]["predict"]["data"] == expected


# ---- a mixed-type model, one input per feature -------------------------------------------------------

DATATYPES = {"island": "BYTES", "bill_length_mm": "FP64", "flipper_length_mm": "INT64", "sex": "BYTES",
             "tagged": "BOOL"}


@pytest.mark.parametrize("client, typed", [("triton", False), ("kserve", True)])
def test_mixed_model_by_feature_with_bytes_inputs(penguins_server, client, typed):
    """The session's model trained on a penguins-like CSV (tests/conftest.py)."""
    penguins = penguins_server
    rows = penguins.model_frame.dropna().iloc[:ROWS]  # the clients' tensors have no gaps
    inputs = [{"name": name, "datatype": DATATYPES[name], "shape": [len(rows)],
               "values": [v.item() if isinstance(v, np.generic) else v for v in rows[name].tolist()]}
              for name in FEATURES]
    answer = run_client(penguins, client, model=penguins.name, inputs=inputs, typed=typed)
    records = [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
               for row in rows.to_dict(orient="records")]
    assert answer["outputs"]["predict"]["datatype"] == "BYTES"
    assert answer["outputs"]["predict"]["data"] == predict_batch(penguins, records)
    assert answer["outputs"]["predict_proba"]["shape"] == [ROWS, 3]


# ---- several workers, drain ----------------------------------------------------------------------------

def listening_pids(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_two_workers_share_the_port_and_both_serve(tmp_path, bentoml_home, trained, model, cancer):
    logs = tmp_path / "payload"

    def change(settings):
        settings["services"]["SklearnService"]["workers"] = 2
        settings["services"]["SklearnService"]["monitoring"] = {
            "enabled": True, "type": "default", "options": {"log_path": str(logs)}}

    config = write_config(tmp_path, change)
    X = cancer["X"][:10]
    expected = model["pipeline"].predict(X).tolist()
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(config)}) as srv:
        port = srv.grpc_port
        assert len(listening_pids(port)) == 2  # one socket per worker (SO_REUSEPORT)
        for _ in range(40):  # a channel per call: each connection lands on either worker
            with grpc.insecure_channel(srv.grpc) as channel:
                answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(model, [10, 30], X.ravel()))
                assert np.frombuffer(answer.raw_output_contents[0]).tolist() == expected
    files = sorted(logs.glob("predictions/data/*.log"))
    assert len(files) == 2  # both workers served
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(lines) == 400 and {line["endpoint"] for line in lines} == {"grpc:ModelInfer"}
    assert [line["prediction"] for line in lines[:10]] == expected


def test_sigterm_drains_calls_in_progress(bentoml_home, trained, model, cancer):
    """Calls in progress at the signal are answered; later ones are refused (UNAVAILABLE), never cut off."""
    srv = Server(bentoml_home).wait_ready()
    message = infer_request(model, [1000, 30], np.resize(cancer["X"], (1000, 30)).ravel())
    calls: list[tuple[float, float, str]] = []  # (sent, done, outcome)
    stop = threading.Event()

    def client():
        with grpc.insecure_channel(srv.grpc) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = "ok" if len(call(message, timeout=30).raw_output_contents) == 2 else "wrong"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                    time.sleep(0.05)
                calls.append((sent, time.monotonic(), outcome))

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        signalled = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        srv.process.wait(timeout=60)
        exited = time.monotonic()
        time.sleep(0.5)  # calls after the exit: refused
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        srv.stop()
    in_progress = [outcome for sent, done, outcome in calls if sent < signalled - 0.05 < done]
    assert in_progress and set(in_progress) == {"ok"}, in_progress
    assert {outcome for sent, _, outcome in calls if sent < signalled - 0.05} == {"ok"}
    assert {outcome for sent, _, outcome in calls if sent > exited} == {"UNAVAILABLE"}
    assert srv.process.returncode == 0 and exited - signalled < 15


@pytest.mark.parametrize("env, settings, expected", [
    ({}, {"port": 8001}, 8001), ({"GRPC_PORT": "9001"}, {"port": 8001}, 9001),
    ({"GRPC_PORT": ""}, {"port": 7001}, 7001),
    ({"GRPC_PORT": "http"}, {"port": 8001}, None), ({"GRPC_PORT": "70000"}, {"port": 8001}, None),
    ({}, {"port": "８００１"}, None),
])
def test_the_port_comes_from_grpc_port_else_the_settings(monkeypatch, env, settings, expected):
    monkeypatch.delenv("GRPC_PORT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if expected is None:
        with pytest.raises(SystemExit, match="the gRPC port"):
            grpc_lifecycle.port(settings)
    else:
        assert grpc_lifecycle.port(settings) == expected


def test_only_the_api_workers_load_grpc(server):
    """The arbiter and the model runner import service.py but serve no gRPC: grpcio (~11 MB a process)
    is loaded by the API worker alone, as it starts its server."""
    def loads_grpc(process: psutil.Process) -> bool:
        return any("cygrpc" in m.path for m in process.memory_maps())

    arbiter = psutil.Process(server.process.pid)
    workers = arbiter.children(recursive=True)
    runners = [p for p in workers if "ModelRunner" in " ".join(p.cmdline())]
    api = [p for p in workers if p not in runners and "service:SklearnService" in " ".join(p.cmdline())]
    assert runners and api
    assert not loads_grpc(arbiter) and not any(loads_grpc(p) for p in runners)
    assert all(loads_grpc(p) for p in api)


def test_switched_off_no_server_starts():
    start, stop = grpc_lifecycle.hooks({"grpc": {"enabled": False}})
    service = type("Service", (), {})()
    asyncio.run(start(service))
    assert service.grpc_server is None
    asyncio.run(stop(service))  # nothing to stop


def test_ipv6_hosts_are_bracketed():
    assert grpc_lifecycle.address({"host": "::", "port": 8001}) == "[::]:8001"
    assert grpc_lifecycle.address({"host": "0.0.0.0", "port": 8001}) == "0.0.0.0:8001"


def test_a_port_another_program_holds_stops_the_service_at_start(bentoml_home, trained):
    with socket.socket() as taken:  # no SO_REUSEPORT: not shareable
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        number = taken.getsockname()[1]
        with pytest.raises(SystemExit, match="cannot be bound .* set GRPC_PORT"):
            grpc_lifecycle.check_bindable({"host": "0.0.0.0", "port": number})
        srv = Server(bentoml_home, env={"GRPC_PORT": str(number)})
        try:
            assert srv.process.wait(timeout=60) != 0  # exits at once, rather than restarting its worker
        finally:
            srv.stop()
        assert "cannot be bound" in srv.log()
    grpc_lifecycle.check_bindable({"host": "0.0.0.0", "port": number})  # free again
