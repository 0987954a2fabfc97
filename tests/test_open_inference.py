"""The Open Inference Protocol (V2) through a real `bentoml serve`: the real tritonclient (binary
tensors, its default, and JSON), raw requests as the protocol's specification writes them, a
mixed-type model by feature, errors in the protocol's form, auth, metrics and hostile bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

import harness.hostile as hostile
from harness.mixed_data import FEATURES
from harness.prometheus_text import delta, scrape
from sklearn_service import open_inference
from sklearn_service.errors import Overloaded, runner_failure

ROWS = 40


def client_for(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)


def predict_batch(server, rows: list) -> list:
    response = requests.post(server.url + "/predict_batch", json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def v2(server, path: str, body=None, **kwargs) -> requests.Response:
    if body is None and "data" not in kwargs:
        return requests.get(server.url + path, timeout=30, **kwargs)
    return requests.post(server.url + path, json=body, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def model(trained):
    name, version = trained["tag"].split(":")
    return {"name": name, "version": version, "pipeline": trained["pipeline"]}


@pytest.fixture(scope="module")
def client(server):
    with client_for(server) as c:
        yield c


# ---- health and metadata ------------------------------------------------------------------------

def test_health_and_server_metadata(client, model):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model["name"]) and client.is_model_ready(model["name"], model["version"])
    assert not client.is_model_ready("other_model") and not client.is_model_ready(model["name"], "v0")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_model_metadata_describes_the_signature(client, model):
    for version in ("", model["version"]):
        meta = client.get_model_metadata(model["name"], version)
        assert meta["name"] == model["name"] and meta["versions"] == [model["version"]]
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
        assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]},
                                   {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
                                   # answered only when named (test_explain_serving.py)
                                   {"name": "explanation", "datatype": "FP64", "shape": [-1, 30]}]


# ---- inference with tritonclient ------------------------------------------------------------------

@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("binary", [True, False])
def test_tensor_inference_equals_predict_batch(server, client, model, cancer, datatype, binary):
    X = cancer["X"][:ROWS].astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput("input-0", list(X.shape), datatype)
    tensor.set_data_from_numpy(X, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "predict_proba")]
    result = client.infer(model["name"], [tensor], outputs=outputs, request_id="req-7")
    expected = predict_batch(server, X.astype(np.float64).tolist())
    assert result.as_numpy("predict").tolist() == expected
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (ROWS, 2) and proba.dtype == np.float64
    assert proba == pytest.approx(model["pipeline"].predict_proba(X.astype(np.float64)))
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == model["name"]
    assert response["model_version"] == model["version"]
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary


def test_client_defaults_answer_every_output_in_binary(server, client, model, cancer):
    tensor = triton.InferInput("input-0", [3, 30], "FP64")
    tensor.set_data_from_numpy(cancer["X"][:3])
    result = client.infer(model["name"], [tensor], model_version=model["version"])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict", "predict_proba"]
    assert result.as_numpy("predict").tolist() == predict_batch(server, cancer["X"][:3].tolist())


def test_outputs_pick_predict_alone(client, model, cancer):
    tensor = triton.InferInput("input-0", [2, 30], "FP64")
    tensor.set_data_from_numpy(cancer["X"][:2], binary_data=False)
    result = client.infer(model["name"], [tensor], outputs=[triton.InferRequestedOutput("predict", binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict"]
    assert result.as_numpy("predict_proba") is None


def test_client_sees_the_protocol_errors(client, model, cancer):
    tensor = triton.InferInput("input-0", [2, 30], "FP64")
    tensor.set_data_from_numpy(cancer["X"][:2])
    with pytest.raises(InferenceServerException, match="no model 'nope'") as error:
        client.infer("nope", [tensor])
    assert error.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown output 'classes'") as error:
        client.infer(model["name"], [tensor], outputs=[triton.InferRequestedOutput("classes")])
    assert error.value.status() == "400"
    words = triton.InferInput("input-0", [1, 30], "BYTES")
    words.set_data_from_numpy(np.array([["x"] * 30], dtype=object))
    with pytest.raises(InferenceServerException, match="feature 'mean radius' must be a number, got a string"):
        client.infer(model["name"], [words])


# ---- raw JSON, as the specification writes it ------------------------------------------------------

def test_specification_example_request(server, model, cancer):
    rows = cancer["X"][:2].tolist()
    body = {"id": "42", "inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP64", "data": rows}],
            "outputs": [{"name": "predict"}]}
    path = f"/v2/models/{model['name']}/versions/{model['version']}/infer"
    response = v2(server, path, body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {"model_name": model["name"], "model_version": model["version"], "id": "42",
                               "outputs": [{"name": "predict", "datatype": "FP64", "shape": [2],
                                            "data": predict_batch(server, rows)}]}
    flat = {"inputs": [{"name": "rows", "shape": [2, 30], "datatype": "FP64", "data": sum(rows, [])}]}
    answer = v2(server, f"/v2/models/{model['name']}/infer", flat).json()
    assert "id" not in answer and answer["outputs"][0]["data"] == predict_batch(server, rows)
    assert answer["outputs"][1] == {"name": "predict_proba", "datatype": "FP64", "shape": [2, 2],
                                    "data": pytest.approx(model["pipeline"].predict_proba(cancer["X"][:2]).ravel())}


def test_specification_health_and_metadata_endpoints(server, model):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{model['name']}/ready",
                 f"/v2/models/{model['name']}/versions/{model['version']}/ready"):
        assert v2(server, path).status_code == 200, path
    assert v2(server, "/v2").json()["name"] == "sklearn-service"
    assert v2(server, f"/v2/models/{model['name']}").json()["platform"] == "scikit-learn"


def test_health_and_model_ready_answer_the_protocols_json(server, model):
    """KServe's client reads these bodies (response.json().get("live")); Triton's reads the status."""
    assert v2(server, "/v2/health/live").json() == {"live": True}
    assert v2(server, "/v2/health/ready").json() == {"ready": True}
    for path in (f"/v2/models/{model['name']}/ready", f"/v2/models/{model['name']}/versions/{model['version']}/ready"):
        answer = v2(server, path)
        assert answer.status_code == 200 and answer.json() == {"name": model["name"], "ready": True}
    with client_for(server) as c:  # still fine for tritonclient
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(model["name"])


def test_null_is_absent_everywhere_in_a_request(server, model, cancer):
    rows = cancer["X"][:2].tolist()
    path = f"/v2/models/{model['name']}/infer"
    body = {"id": None, "parameters": None, "outputs": None,
            "inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP64", "data": rows, "parameters": None}]}
    answer = v2(server, path, body)
    assert answer.status_code == 200, answer.text
    assert "id" not in answer.json() and [o["name"] for o in answer.json()["outputs"]] == ["predict", "predict_proba"]
    one = v2(server, path, {**body, "outputs": [{"name": "predict", "parameters": None}]})
    assert one.status_code == 200 and one.json()["outputs"][0]["data"] == predict_batch(server, rows)


def tensor(shape, data, datatype="FP64", name="input-0", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


ROW = [1.0] * 30


# The full table of bad requests runs in-process (test_v2_codec); these prove each stage answers in the
# protocol's form through a real server: the codec, the row mapping, validation, outputs.
@pytest.mark.parametrize("body, words", [
    (tensor([1, 30], [1.0] * 29), "data holds 29 values, its shape needs 30"),
    ({"inputs": [{"name": "mean radius", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
     "missing input(s) for feature(s) ['mean texture'"),
    (tensor([1, 30], [None] * 30), "feature 'mean radius' may not be missing"),
    (tensor([1, 30], ROW, outputs=[{"name": "classes"}]),
     "unknown output 'classes'; this model has: predict, predict_proba"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_requests_are_400_naming_the_problem(server, model, body, words):
    response = v2(server, f"/v2/models/{model['name']}/infer", body)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and words in response.json()["error"], response.json()


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/{name}/versions/v0",
                                  "/v2/models/{name}/versions/v0/infer", "/v2/models/nope/infer"])
def test_unknown_models_are_404_in_the_protocol_form(server, model, path):
    path = path.format(name=model["name"])
    response = v2(server, path, tensor([1, 30], ROW) if path.endswith("infer") else None)
    assert response.status_code == 404 and list(response.json()) == ["error"]
    assert "no model" in response.json()["error"]


def binary_request(server, model, header: dict, raw: bytes, length: str | None = None) -> requests.Response:
    text = json.dumps(header).encode()
    return requests.post(server.url + f"/v2/models/{model['name']}/infer", data=text + raw, timeout=30,
                         headers={"Inference-Header-Content-Length": length or str(len(text))})


@pytest.mark.parametrize("length", ["\u00b2", "\u0661\u0662", "9" * 400, "-0",
                                    "1e3", "0x10", "12.0", ""], ids=lambda v: ascii(v)[:12])
def test_header_length_takes_only_bounded_ascii_digits(server, model, length):
    """str.isdigit() takes '²' (int() then raised: a 500) and Arabic-Indic or full-width digits
    (int() read them): only ASCII digits, at most the body's length."""
    text = json.dumps(tensor([1, 30], ROW)).encode()
    try:
        raw = length.encode("latin-1")  # how HTTP headers are read: "²" arrives as "²"
    except UnicodeEncodeError:
        raw = length.encode()
    response = requests.post(server.url + f"/v2/models/{model['name']}/infer", data=text, timeout=30,
                             headers={"Inference-Header-Content-Length": raw})
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length must be" in response.json()["error"]


@pytest.mark.parametrize("shape", [[10 ** 400, 30], [1, 10 ** 400], [2 ** 63, 30], [True, 30], [1, True],
                                   [1.0, 30], [1e308, 30], ["1", 30], [None, 30], [[1], 30], [-1, 30]],
                         ids=lambda v: str(v)[:12])
def test_shape_dimensions_are_bounded_json_integers(server, model, shape):
    body = json.dumps(tensor(shape, ROW))
    response = requests.post(server.url + f"/v2/models/{model['name']}/infer", data=body, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "shape must be [N, features] or [N] with whole numbers 0 to 9223372036854775807" in error
    assert len(error) < 300  # a 400-digit dimension is not echoed back


@pytest.mark.parametrize("size", [10 ** 400, 2 ** 64, True, -1, 1.5, "240", None], ids=lambda v: repr(v)[:12])
def test_binary_data_size_is_a_bounded_integer(server, model, size):
    header = {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                          "parameters": {"binary_data_size": size}}]}
    response = binary_request(server, model, header, np.ones(30).tobytes())
    assert response.status_code == 400, response.text
    assert len(response.json()["error"]) < 300


def test_binary_bytes_elements_are_checked(server, model):
    header = {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "BYTES",
                          "parameters": {"binary_data_size": 8}}]}
    for length in (100, 2 ** 32 - 1):
        response = binary_request(server, model, header, length.to_bytes(4, "little") + b"abcd")
        assert response.status_code == 400 and "BYTES element 0 runs past its data" in response.json()["error"]


@hostile.HOSTILE
@given(value=hostile.ANY_JSON, field=st.sampled_from(["data", "shape", "datatype", "name", "parameters"]))
def test_any_json_in_a_tensor_is_never_a_server_error(server, model, value, field):
    spec = {"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": ROW, field: value}
    body = json.dumps({"inputs": [spec]})  # NaN and Infinity literals included
    hostile.assert_clear_client_answer(requests.post(server.url + f"/v2/models/{model['name']}/infer", data=body,
                                                     headers={"Content-Type": "application/json"}, timeout=10))


@hostile.HOSTILE
@given(value=hostile.ANY_JSON, field=st.sampled_from(["shape", "datatype", "name", "parameters", "inputs", "outputs"]))
def test_any_json_in_a_binary_request_is_never_a_server_error(server, model, value, field):
    spec = {"name": "input-0", "shape": [1, 30], "datatype": "FP64", "parameters": {"binary_data_size": 240}}
    header = {"inputs": [spec]}
    (header if field in ("inputs", "outputs") else spec)[field] = value
    text = json.dumps(header).encode()
    hostile.assert_clear_client_answer(requests.post(
        server.url + f"/v2/models/{model['name']}/infer", data=text + np.ones(30).tobytes(), timeout=10,
        headers={"Inference-Header-Content-Length": str(len(text))}))


# ---- shared with the rest of the API: metrics, auth --------------------------------------------------

def test_v2_requests_count_in_the_service_metrics(server, model, cancer):
    before = scrape(server.url)
    assert v2(server, f"/v2/models/{model['name']}/infer", tensor([3, 30], cancer["X"][:3].tolist())).ok
    assert v2(server, f"/v2/models/{model['name']}/infer", tensor([2, 29], [1.0] * 58)).status_code == 400
    after = scrape(server.url)
    assert delta(before, after, "ml_predictions_total", endpoint="/v2/infer", outcome="success") == 3
    assert delta(before, after, "ml_predictions_total", endpoint="/v2/infer", outcome="rejected") == 2
    assert delta(before, after, "ml_rejected_requests_total", endpoint="/v2/infer", reason="wrong_shape") == 1


# what received_rows reads from each kind of body is tested in-process (test_v2_codec); these show
# the counters take it, for a refusal in the codec, in the row mapping and in validation
@pytest.mark.parametrize("body, received", [
    (tensor([10 ** 308, 30], ROW), 1),
    (tensor([3], ROW[:3], name="mean radius"), 3),
    (tensor([2, 30], [ROW, [None] * 30]), 2),
])
def test_refused_requests_count_the_rows_received_not_the_rows_claimed(server, model, body, received):
    """A shape claiming 10**308 rows added them to the counter (twice: +Inf until a restart)."""
    before = scrape(server.url)
    for _ in range(2):
        assert v2(server, f"/v2/models/{model['name']}/infer", body).status_code == 400
    after = scrape(server.url)
    assert delta(before, after, "ml_predictions_total", endpoint="/v2/infer", outcome="rejected") == 2 * received
    assert all(math.isfinite(value) for value in after.values())


@pytest.mark.parametrize("datatype, received", [("FP64", 2), ("BYTES", 4), (["FP64"], 4), ({"a": 1}, 4), (None, 4)])
def test_refused_binary_requests_count_the_rows_in_the_body(server, model, datatype, received):
    header = {"inputs": [{"name": "input-0", "shape": [10 ** 18, 30], "datatype": datatype,
                          "parameters": {"binary_data_size": 480}}]}
    before = scrape(server.url)
    assert binary_request(server, model, header, np.ones(60).tobytes()).status_code == 400
    assert delta(before, scrape(server.url), "ml_predictions_total", endpoint="/v2/infer",
                 outcome="rejected") == received


def test_row_and_body_limits_apply(server, model):
    path = f"/v2/models/{model['name']}/infer"
    too_many = v2(server, path, tensor([1001, 30], [ROW] * 1001))
    assert too_many.status_code == 413 and "at most 1000" in too_many.json()["error"]
    too_big = requests.post(server.url + path, data=b"[" * (9 * 2**20), timeout=30,
                            headers={"Inference-Header-Content-Length": "1"})
    assert too_big.status_code == 413


def test_runner_trouble_is_a_503_to_retry_in_the_protocol_form():
    response = open_inference.protocol_error(runner_failure(Overloaded("busy"), logging.getLogger("test")))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert json.loads(response.body) == {"error": "the service is overloaded, retry shortly"}


def test_an_unreachable_runner_is_not_ready():
    class Runner:
        async def is_ready(self, timeout):
            raise ConnectionError("refused")

    assert asyncio.run(open_inference.runner_ready(Runner())) is False


def test_api_key_guards_v2_but_not_its_health_probes(keyed_server, model, cancer):
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert v2(keyed_server, path).status_code == 200, path
    for path in ("/v2", f"/v2/models/{model['name']}", f"/v2/models/{model['name']}/ready"):
        assert v2(keyed_server, path).status_code == 401, path
    assert v2(keyed_server, f"/v2/models/{model['name']}/infer", tensor([1, 30], ROW)).status_code == 401
    with client_for(keyed_server) as keyed:
        tensor_in = triton.InferInput("input-0", [2, 30], "FP64")
        tensor_in.set_data_from_numpy(cancer["X"][:2])
        result = keyed.infer(model["name"], [tensor_in], headers={"Authorization": f"Bearer {keyed_server.api_key}"})
        assert result.as_numpy("predict").tolist() == model["pipeline"].predict(cancer["X"][:2]).tolist()


# ---- a mixed-type model, one input per feature -------------------------------------------------------

@pytest.fixture(scope="module")
def penguins(penguins_server):
    penguins_server.rows = penguins_server.model_frame.dropna().iloc[:ROWS]  # tritonclient's tensors have no gaps
    return penguins_server


def feature_inputs(rows, binary: bool) -> list:
    datatypes = {"island": "BYTES", "bill_length_mm": "FP64", "flipper_length_mm": "INT64", "sex": "BYTES",
                 "tagged": "BOOL"}
    inputs = []
    for name in FEATURES:
        column = rows[name].to_numpy()
        column = column.astype(object if datatypes[name] == "BYTES" else triton.triton_to_np_dtype(datatypes[name]))
        tensor_in = triton.InferInput(name, [len(rows)], datatypes[name])
        tensor_in.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor_in)
    return inputs


def records(rows) -> list[dict]:
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
            for row in rows.to_dict(orient="records")]


@pytest.mark.parametrize("binary", [True, False])
def test_mixed_model_by_feature_with_bytes_inputs(penguins, binary):
    with client_for(penguins) as c:
        meta = c.get_model_metadata(penguins.name)
        assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
            "island": "BYTES", "bill_length_mm": "FP64", "flipper_length_mm": "INT64", "sex": "BYTES",
            "tagged": "BOOL"}
        assert meta["outputs"][0] == {"name": "predict", "datatype": "BYTES", "shape": [-1]}
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "predict_proba")]
        result = c.infer(penguins.name, feature_inputs(penguins.rows, binary), outputs=outputs)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict").tolist()]
    assert labels == predict_batch(penguins, records(penguins.rows))
    assert result.get_response()["outputs"][0]["datatype"] == "BYTES"
    assert result.as_numpy("predict_proba").shape == (ROWS, 3)


def test_mixed_model_raw_columns_with_missing_values_and_errors(penguins):
    path = f"/v2/models/{penguins.name}/infer"
    columns = {"inputs": [
        {"name": "island", "shape": [2, 1], "datatype": "BYTES", "data": [["Dream"], ["Biscoe"]]},
        {"name": "bill_length_mm", "shape": [2], "datatype": "FP64", "data": [50.1, None]},
        {"name": "tagged", "shape": [2], "datatype": "BOOL", "data": [True, False]}],
        "outputs": [{"name": "predict"}]}  # flipper_length_mm and sex may be missing: left out
    answer = v2(penguins, path, columns)
    assert answer.status_code == 200, answer.text
    expected = predict_batch(penguins, [{"island": "Dream", "bill_length_mm": 50.1, "tagged": True},
                                        {"island": "Biscoe", "tagged": False}])
    assert answer.json()["outputs"] == [{"name": "predict", "datatype": "BYTES", "shape": [2], "data": expected}]
    wrong = {"inputs": [{**columns["inputs"][0], "datatype": "FP64", "data": [1.0, 2.0]}, *columns["inputs"][1:]]}
    refused = v2(penguins, path, wrong)
    assert refused.status_code == 400 and "instance 0: feature 'island' must be a category" in refused.json()["error"]
    missing = v2(penguins, path, {"inputs": columns["inputs"][:2]})
    assert missing.status_code == 400 and "missing input(s) for feature(s) ['tagged']" in missing.json()["error"]
    uneven = {"inputs": [columns["inputs"][0], {**columns["inputs"][2], "shape": [1], "data": [True]}]}
    assert "different numbers of rows" in v2(penguins, path, uneven).json()["error"]

