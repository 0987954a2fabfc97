"""Every endpoint and error case against a real `bentoml serve` process."""

from __future__ import annotations


import bentoml
import numpy as np
import pytest
import requests


def test_seed_contract_matches_the_trained_pipeline(post, trained, cancer):
    for row in cancer["X"][:5]:
        response = post("/predict", {"features": row.tolist()})
        assert response.status_code == 200
        assert response.json() == {"prediction": float(trained["pipeline"].predict([row])[0])}


def test_named_features_give_the_same_answer(post, cancer):
    row = cancer["X"][3]
    named = dict(zip(cancer["names"], row.tolist()))
    assert post("/predict", {"features": named}).json() == post("/predict", {"features": row.tolist()}).json()


def test_batch_keeps_order(post, trained, cancer):
    rows = cancer["X"][::7]
    response = post("/predict_batch", {"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.json()["predictions"] == trained["pipeline"].predict(rows).astype(float).tolist()


def test_probabilities_are_keyed_by_class_label(post, trained, cancer):
    row = cancer["X"][0]
    body = post("/predict_proba", {"features": row.tolist()}).json()
    expected = trained["pipeline"].predict_proba([row])[0]
    assert body["probabilities"] == pytest.approx(dict(zip(["0", "1"], expected)))
    assert body["prediction"] == float(np.argmax(expected))


def test_metadata_describes_the_served_model(server, trained):
    meta = requests.get(server.url + "/metadata", timeout=5).json()
    assert meta["tag"] == trained["tag"]
    assert meta["task"] == "classification" and meta["classes"] == [0, 1]
    assert meta["input_schema"]["properties"]["mean radius"]["type"] == "number"
    assert len(meta["feature_names"]) == 30 and meta["holdout_metrics"]["accuracy"] > 0.9
    assert meta["versions"]["scikit-learn"] and meta["created"]


def test_health_metrics_and_openapi_keep_working(server):
    assert requests.get(server.url + "/livez", timeout=5).status_code == 200
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    assert "bentoml_service_request_total" in requests.get(server.url + "/metrics", timeout=5).text
    paths = requests.get(server.url + "/docs.json", timeout=5).json()["paths"]
    assert {"/predict", "/predict_batch", "/predict_proba"} <= set(paths)


TWENTY_NINE = [1.0] * 29


@pytest.mark.parametrize("path, payload, status, words", [
    ("/predict", {"features": TWENTY_NINE}, 400, "expected 30 features, got 29"),
    ("/predict", {"features": [1.0] * 29 + ["x"]}, 400, "feature 'worst fractal dimension' must be a number, got a string"),
    ("/predict", {"features": [1.0] * 29 + [True]}, 400, "must be a number, got a boolean"),
    ("/predict", {"features": [1.0] * 29 + [None]}, 400, "may not be missing"),
    ("/predict", {"features": [1.0] * 29 + [[1.0]]}, 400, "feature 'worst fractal dimension' must be a number, got a list"),
    ("/predict", {"features": [1.0] * 29 + [{"a": 1}]}, 400, "must be a number, got an object"),
    ("/predict_batch", {"instances": [[1.0] * 30, [1.0] * 29 + [[1.0]]]}, 400, "instance 1: feature 'worst fractal dimension' must be a number, got a list"),
    ("/predict", {"features": {"mean radius": 1.0}}, 400, "missing 29 feature(s)"),
    ("/predict", {"features": {"nope": 1.0}}, 400, "unknown feature name(s): ['nope']"),
    ("/predict_batch", {"instances": []}, 400, "at least one row"),
    ("/predict_batch", {"instances": [[1.0] * 30, TWENTY_NINE]}, 400, "instance 1: expected 30 features, got 29"),
    ("/predict_batch", {"instances": [[1.0] * 30] * 1001}, 413, "at most 1000 instances"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(post, path, payload, status, words):
    response = post(path, payload)
    assert response.status_code == status
    assert words in response.json()["error"], response.json()


@pytest.mark.parametrize("payload, problem", [
    ({"features": 1.0}, ("list_type", "features", [])),  # a row that is neither a list nor an object
    ({"wrong_key": []}, ("missing", "features", [])),
    ({}, ("missing", "features", [])),
])
def test_requests_of_the_wrong_shape_get_pydantics_400_locating_the_problem(post, payload, problem):
    """Refused before the service sees them, pydantic's errors in `detail` (README: "Bad input"):
    each names the field, and the position of the bad value (a loc is field, type tried, index, ...)."""
    response = post("/predict", payload)
    assert response.status_code == 400 and response.json()["error"].endswith("validation error for Input")
    detail = response.json()["detail"]
    assert all(d["loc"][0] == "features" and d["msg"] for d in detail), detail
    assert problem in [(d["type"], d["loc"][0], d["loc"][2:3]) for d in detail], detail


@pytest.mark.parametrize("raw", ['{"features": [NaN' + ", 1.0" * 29 + "]}",
                                 '{"features": [1e400' + ", 1.0" * 29 + "]}",
                                 '{"features": [-Infinity' + ", 1.0" * 29 + "]}"])
def test_non_finite_values_are_refused(server, raw):
    response = requests.post(server.url + "/predict", data=raw, timeout=5,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not a finite number" in response.json()["error"]


def test_malformed_json_is_a_400(server):
    response = requests.post(server.url + "/predict", data=b'{"features": [1,',
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400 and "Invalid JSON" in response.text


def test_python_client(server, trained, cancer):
    with bentoml.SyncHTTPClient(server.url) as client:
        answer = client.predict(features=cancer["X"][0].tolist())
        named = client.predict(features=dict(zip(cancer["names"], cancer["X"][0].tolist())))
        batch = client.predict_batch(instances=cancer["X"][:20].tolist())
        proba = [client.predict_proba(features=row) for row in cancer["X"][:5].tolist()]
    pipeline = trained["pipeline"]
    assert named == answer
    assert answer["prediction"] == float(pipeline.predict(cancer["X"][:1])[0])
    assert batch["predictions"] == pipeline.predict(cancer["X"][:20]).astype(float).tolist()
    labels, probabilities = pipeline.predict(cancer["X"][:5]), pipeline.predict_proba(cancer["X"][:5]).tolist()
    assert proba == [{"prediction": float(label), "probabilities": dict(zip(map(str, pipeline.classes_), ps))}
                     for label, ps in zip(labels, probabilities)]
