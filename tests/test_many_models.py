"""Several models in one service, through a real `bentoml serve`: per-model routes, V2 for each, the
model repository (index, load, unload), live version swaps under load, metrics and drift per model."""

from __future__ import annotations

import threading
import time

import bentoml
import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.datasets import load_diabetes

import train as train_cli
from harness.load import run_load
from harness.mixed_data import json_rows, write_penguins_csv
from harness.prometheus_text import scrape, total
from harness.serving import Server, write_config
from sklearn_service.csv_data import Dataset, load_csv_dataset
from sklearn_service.model_store import save_result, save_to_store
from sklearn_service.training import train

PENGUINS, DIABETES = "zoo_penguins", "zoo_diabetes"


def post(srv, path, payload=None, **kwargs):
    return requests.post(srv.url + path, json=payload, timeout=30, **kwargs)


def v2_request(srv, name: str, frame) -> dict:
    """A V2 JSON request for these rows, shaped as the model's V2 metadata says."""
    inputs = requests.get(f"{srv.url}/v2/models/{name}", timeout=10).json()["inputs"]
    if len(inputs) == 1:  # numbers only: one [N, F] tensor
        return {"inputs": [{**inputs[0], "shape": list(frame.shape), "data": frame.to_numpy().tolist()}]}
    kinds = {"BYTES": str, "BOOL": bool, "INT64": int, "FP64": float}
    return {"inputs": [{"name": i["name"], "datatype": i["datatype"], "shape": [len(frame)],
                        "data": [kinds[i["datatype"]](v) for v in frame[i["name"]].tolist()]} for i in inputs]}


@pytest.fixture(scope="module")
def zoo_models(trained, cancer, tmp_path_factory) -> dict:
    """Beside the default numeric classifier, a mixed-type classifier with string labels and a regressor in
    the store: by name, (fitted model, rows to ask it about)."""
    csv = tmp_path_factory.mktemp("zoo") / "penguins.csv"
    write_penguins_csv(csv)
    assert train_cli.main(["--data", str(csv), "--target", "species", "--name", PENGUINS]) == 0
    bunch = load_diabetes(as_frame=True)
    regressor = train(Dataset(bunch.data, bunch.target, "sklearn.datasets.load_diabetes"), task="regression")
    save_result(regressor, DIABETES)
    return {"sklearn_model": (trained["pipeline"], pd.DataFrame(cancer["X"][:40])),
            PENGUINS: (bentoml.sklearn.load_model(f"{PENGUINS}:latest"),
                       load_csv_dataset(csv, "species").X.dropna().iloc[:40]),
            DIABETES: (regressor.pipeline, bunch.data.iloc[:40]), "csv": csv}


@pytest.fixture(scope="module")
def zoo(bentoml_home, zoo_models, tmp_path_factory):
    """The three served at once."""
    # a small queue per model, so that a flood of one model overflows its own and nobody else's
    config = write_config(tmp_path_factory.mktemp("zoo-config"), lambda s: s["app"].update(max_queued_rows=3000))
    env = {"MODELS": f"sklearn_model,{PENGUINS},{DIABETES}:latest", "SERVICE_CONFIG": str(config)}
    with Server(bentoml_home, env=env).wait_ready(120) as srv:
        srv.expected = {name: models for name, models in zoo_models.items() if name != "csv"}
        srv.csv = zoo_models["csv"]
        yield srv


def rows_of(X: pd.DataFrame) -> list:
    """Rows as a client sends them: by name, or positional where the model's features have no names."""
    return X.to_numpy().tolist() if isinstance(X.columns[0], int) else json_rows(X)


def labels(predicted: np.ndarray) -> list:
    """Predictions as the service answers them: numbers as floats, strings as they are."""
    return [v if isinstance(v, str) else float(v) for v in predicted.tolist()]


def test_every_model_answers_as_in_process_on_every_route(zoo):
    listed = requests.get(zoo.url + "/models", timeout=10).json()["models"]
    assert [(m["name"], m["task"], m["default"]) for m in listed] == [
        ("sklearn_model", "classification", True), (DIABETES, "regression", False),
        (PENGUINS, "classification", False)]
    for name, (pipeline, X) in zoo.expected.items():
        expected = labels(pipeline.predict(X.to_numpy() if name == "sklearn_model" else X))
        rows = rows_of(X)
        batch = post(zoo, f"/models/{name}/predict_batch", {"instances": rows})
        assert batch.status_code == 200 and batch.json()["predictions"] == expected, name
        assert post(zoo, f"/models/{name}/predict", {"features": rows[3]}).json() == {"prediction": expected[3]}
        v2 = post(zoo, f"/v2/models/{name}/infer", v2_request(zoo, name, X))
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["data"] == expected and v2.json()["model_name"] == name
        metadata = requests.get(f"{zoo.url}/models/{name}/metadata", timeout=10).json()
        assert metadata["tag"] == next(m["tag"] for m in listed if m["name"] == name)
        if hasattr(pipeline, "predict_proba"):
            proba = post(zoo, f"/models/{name}/predict_proba", {"features": rows[3]}).json()["probabilities"]
            assert list(proba.values()) == pytest.approx(pipeline.predict_proba(
                X.to_numpy()[3:4] if name == "sklearn_model" else X.iloc[[3]])[0].tolist())
    # the classic routes are the default model's
    pipeline, X = zoo.expected["sklearn_model"]
    assert post(zoo, "/predict_batch", {"instances": rows_of(X)}).json()["predictions"] == \
        labels(pipeline.predict(X.to_numpy()))


def test_each_models_routes_validate_with_its_own_signature(zoo):
    wrong = post(zoo, f"/models/{PENGUINS}/predict", {"features": [1.0] * 30})
    assert wrong.status_code == 400 and "expected 5 features, got 30" in wrong.json()["error"]
    typed = post(zoo, f"/models/{PENGUINS}/predict", {"features": {"island": 3}})
    assert typed.status_code == 400 and typed.json()["reason"] in ("wrong_type", "missing_feature")
    shape = post(zoo, f"/models/{DIABETES}/predict", {"wrong_key": []})
    assert shape.status_code == 400 and shape.json()["error"].endswith("validation error for Input")
    assert shape.json()["detail"][0]["loc"][0] == "features"  # pydantic's, as on the classic route
    proba = post(zoo, f"/models/{DIABETES}/predict_proba", {"features": [0.0] * 10})
    assert proba.status_code == 400 and proba.json()["reason"] == "not_a_classifier"
    unknown = post(zoo, "/models/nope/predict", {"features": [1.0]})
    assert unknown.status_code == 404
    assert "no model 'nope' is served" in unknown.json()["error"] and PENGUINS in unknown.json()["error"]
    assert post(zoo, f"/models/{PENGUINS}/fly", {"features": []}).status_code == 404
    paths = requests.get(zoo.url + "/docs.json", timeout=10).json()["paths"]
    body = paths[f"/models/{PENGUINS}/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]["features"]["properties"]) == {"island", "bill_length_mm", "flipper_length_mm",
                                                                 "sex", "tagged"}


def test_metrics_are_per_model_from_load(zoo):
    before = scrape(zoo.url)
    for name in (PENGUINS, DIABETES):  # every model's series exist before its first request
        assert ("ml_predictions_total", frozenset({("model", name), ("endpoint", "/predict"), ("outcome", "error"),
                ("model_tag", str(bentoml.models.get(f"{name}:latest").tag))})) in before
    rows = rows_of(zoo.expected[PENGUINS][1])
    assert post(zoo, f"/models/{PENGUINS}/predict_batch", {"instances": rows[:7]}).status_code == 200
    after = scrape(zoo.url)
    for name, count in ((PENGUINS, 7), (DIABETES, 0), ("sklearn_model", 0)):
        grown = total(after, "ml_predictions_total", model=name, endpoint="/predict_batch", outcome="success") - \
            total(before, "ml_predictions_total", model=name, endpoint="/predict_batch", outcome="success")
        assert grown == count, name
    assert ("ml_feature_drift_psi", frozenset({("model", PENGUINS), ("feature", "island")})) in after
    assert ("ml_feature_drift_psi", frozenset({("model", DIABETES), ("feature", "bmi")})) in after
    assert total(after, "ml_model_info", model=PENGUINS) == 1


def test_one_models_flood_does_not_starve_the_others(zoo):
    """Each model has its own queue (app.max_queued_rows) and at most two runner calls in flight per
    API worker: a flood that overflows one model's queue leaves the others answered."""
    X = zoo.expected["sklearn_model"][1].to_numpy()
    flood = [("/models/sklearn_model/predict_batch", {"instances": np.resize(X, (1000, 30)).tolist()})] * 150
    others = [(f"/models/{DIABETES}/predict", {"features": zoo.expected[DIABETES][1].iloc[0].tolist()})] * 200
    results: dict[str, list] = {}
    flooding = threading.Thread(target=lambda: results.setdefault("flood", run_load(zoo.url, flood, clients=48)))
    flooding.start()
    time.sleep(0.3)
    results["others"] = run_load(zoo.url, others, clients=4)
    flooding.join(120)
    assert {r.status for r in results["others"]} == {200}, {r.status for r in results["others"]}
    assert {r.status for r in results["flood"]} <= {200, 503}
    assert max(r.seconds for r in results["others"]) < 5


def test_repository_index_load_and_unload(zoo):
    index = post(zoo, "/v2/repository/index").json()
    assert {(e["name"], e["state"]) for e in index} >= {("sklearn_model", "READY"), (PENGUINS, "READY"),
                                                        (DIABETES, "READY")}
    assert "model_repository" in requests.get(zoo.url + "/v2", timeout=10).json()["extensions"]
    assert post(zoo, f"/v2/repository/models/{DIABETES}/unload").status_code == 200
    gone = post(zoo, f"/models/{DIABETES}/predict", {"features": [0.0] * 10})
    assert gone.status_code == 404 and "unloaded" in gone.json()["error"]
    assert requests.get(f"{zoo.url}/v2/models/{DIABETES}/ready", timeout=10).status_code == 404
    assert post(zoo, f"/v2/models/{DIABETES}/infer", {"inputs": []}).status_code == 404
    states = {(e["name"], e["state"], e["reason"]) for e in post(zoo, "/v2/repository/index").json()}
    assert (DIABETES, "UNAVAILABLE", "unloaded") in states
    assert post(zoo, "/v2/repository/index", {"ready": True}).json() == [
        e for e in post(zoo, "/v2/repository/index").json() if e["state"] == "READY"]
    # the others keep serving; the default model cannot be unloaded
    assert post(zoo, f"/models/{PENGUINS}/predict_batch",
                {"instances": rows_of(zoo.expected[PENGUINS][1])}).status_code == 200
    refused = post(zoo, "/v2/repository/models/sklearn_model/unload")
    assert refused.status_code == 409 and "default model" in refused.json()["error"]
    assert post(zoo, f"/v2/repository/models/{DIABETES}/load").json()["state"] == "READY"
    assert post(zoo, f"/models/{DIABETES}/predict", {"features": [0.0] * 10}).status_code == 200
    # a model first stored after start-up: one call, no restart
    pipeline, X = zoo.expected["sklearn_model"]
    save_to_store(pipeline, bentoml.models.get("sklearn_model:latest").info.metadata, "zoo_newcomer")
    assert post(zoo, "/v2/repository/models/zoo_newcomer/load").status_code == 200
    answered = post(zoo, "/models/zoo_newcomer/predict_batch", {"instances": rows_of(X)})
    assert answered.json()["predictions"] == labels(pipeline.predict(X.to_numpy()))


@pytest.mark.parametrize("path, body, status, words", [
    ("/v2/repository/models/nope/load", None, 404, "no model 'nope' in the model store"),
    (f"/v2/repository/models/{PENGUINS}/load", {"parameters": {"version": "nosuchversion"}}, 404,
     "has no version 'nosuchversion'; its versions:"),
    (f"/v2/repository/models/{PENGUINS}/load", {"parameters": {"version": 7}}, 400, "'version' a string"),
    (f"/v2/repository/models/{PENGUINS}/load", [1], 400, "must be a JSON object"),
    ("/v2/repository/models/nope/unload", None, 404, "no model 'nope' is served"),
    ("/v2/repository/index", {"ready": "yes"}, 400, "'ready' must be true or false"),
])
def test_bad_repository_calls_are_4xx_and_change_nothing(zoo, path, body, status, words):
    before = requests.get(zoo.url + "/models", timeout=10).json()
    response = post(zoo, path, body)
    assert response.status_code == status and words in response.json()["error"], response.text
    assert requests.get(zoo.url + "/models", timeout=10).json() == before


def test_a_broken_model_is_refused_with_the_reason_and_nothing_changes(zoo, tmp_path, monkeypatch):
    """A model whose code the server cannot import: its load is a 422 naming the module."""
    module = tmp_path / "zoo_private_steps.py"
    module.write_text("from sklearn.base import BaseEstimator, TransformerMixin\n"
                      "class Doubler(TransformerMixin, BaseEstimator):\n"
                      "    def fit(self, X, y=None):\n        return self\n"
                      "    def transform(self, X):\n        return X * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from zoo_private_steps import Doubler  # type: ignore[import-not-found]

    X, y = zoo.expected["sklearn_model"][1].to_numpy(), np.arange(40) % 2
    bentoml.sklearn.save_model("zoo_broken", make_pipeline(Doubler(), LogisticRegression()).fit(X, y))
    before = requests.get(zoo.url + "/models", timeout=10).json()
    response = post(zoo, "/v2/repository/models/zoo_broken/load")
    assert response.status_code == 422 and "zoo_private_steps" in response.json()["error"], response.text
    assert "nothing served changed" in response.json()["error"]
    assert requests.get(zoo.url + "/models", timeout=10).json() == before
    assert post(zoo, f"/models/{PENGUINS}/predict_batch",
                {"instances": rows_of(zoo.expected[PENGUINS][1])}).status_code == 200
    index = {e["name"]: e for e in post(zoo, "/v2/repository/index").json()}
    assert index["zoo_broken"]["state"] == "UNAVAILABLE" and "zoo_private_steps" in index["zoo_broken"]["reason"]


def test_a_version_trained_after_start_up_takes_over_under_load_without_a_failed_request(zoo):
    old = bentoml.models.get(f"{PENGUINS}:latest")
    assert train_cli.main(["--data", str(zoo.csv), "--target", "species", "--name", PENGUINS,
                           "--model", "logistic_regression"]) == 0
    new = bentoml.models.get(f"{PENGUINS}:latest")
    assert new.tag != old.tag
    X = zoo.expected[PENGUINS][1]
    rows, before, after = rows_of(X), bentoml.sklearn.load_model(old).predict(X), bentoml.sklearn.load_model(new).predict(X)
    load = [(f"/models/{PENGUINS}/predict", {"features": rows[i % len(rows)]}) for i in range(400)]
    load += [("/predict", {"features": zoo.expected["sklearn_model"][1].iloc[0].tolist()})] * 100
    results: list = []
    swapped = threading.Event()

    def keep_loading() -> None:  # from before the load call until after it returned
        while not swapped.is_set() and len(results) < 100_000:
            results.extend(run_load(zoo.url, load, clients=32))

    loader = threading.Thread(target=keep_loading)
    loader.start()
    time.sleep(1.0)
    loaded = post(zoo, f"/v2/repository/models/{PENGUINS}/load")
    time.sleep(0.5)
    swapped.set()
    loader.join(120)
    assert loaded.status_code == 200 and loaded.json()["version"] == new.tag.version, loaded.text
    assert [r for r in results if r.status != 200][:3] == []
    answered = [(r.index, r.body["prediction"]) for r in results if r.index < 400]
    assert all(prediction in (before[i % 40], after[i % 40]) for i, prediction in answered)
    assert {prediction == after[i % 40] for i, prediction in answered[-50:]} == {True}  # the new one took over
    served = requests.get(f"{zoo.url}/v2/models/{PENGUINS}", timeout=10).json()
    assert served["versions"] == [new.tag.version]
    assert post(zoo, f"/models/{PENGUINS}/predict_batch", {"instances": rows}).json()["predictions"] == after.tolist()
    # and back: the old version by its version, as a rollback would
    back = post(zoo, f"/v2/repository/models/{PENGUINS}/load", {"parameters": {"version": old.tag.version}})
    assert back.status_code == 200
    assert post(zoo, f"/v2/models/{PENGUINS}/versions/{old.tag.version}/infer",
                v2_request(zoo, PENGUINS, X)).json()["outputs"][0]["data"] == before.tolist()
    samples = scrape(zoo.url)
    assert total(samples, "ml_model_info", model=PENGUINS, model_tag=str(new.tag)) == 0
    assert total(samples, "ml_model_info", model=PENGUINS, model_tag=str(old.tag)) == 1


def test_two_api_workers_and_two_runners_agree_on_what_is_served(bentoml_home, trained, cancer, zoo_models, tmp_path):
    """Each API worker reads the served record on every lookup; each runner loads a version on its first
    call for it. After a repository call returns, every worker answers from the new record."""
    config = write_config(tmp_path, lambda s: [s["services"][name].update(workers=2)
                                               for name in ("SklearnService", "ModelRunner")])
    env = {"MODELS": f"sklearn_model,{DIABETES}", "SERVICE_CONFIG": str(config)}
    with Server(bentoml_home, env=env).wait_ready(120) as srv:
        X = cancer["X"][:20].tolist()
        assert post(srv, f"/v2/repository/models/{DIABETES}/unload").status_code == 200
        answers = run_load(srv.url, [(f"/models/{DIABETES}/predict", {"features": [0.0] * 10})] * 40, clients=8,
                           new_connections=True)
        assert {r.status for r in answers} == {404}
        assert post(srv, f"/v2/repository/models/{DIABETES}/load").status_code == 200
        bunch = load_diabetes()
        expected = bentoml.sklearn.load_model(f"{DIABETES}:latest").predict(bunch.data[:1]).tolist()
        answers = run_load(srv.url, [(f"/models/{DIABETES}/predict", {"features": bunch.data[0].tolist()})] * 40,
                           clients=8, new_connections=True)
        assert {r.status for r in answers} == {200} and {r.body["prediction"] for r in answers} == set(expected)
        # a version neither runner holds: the one that did not load it takes it when it sees the record change
        frame = load_diabetes(as_frame=True)
        newer = train(Dataset(frame.data, frame.target, "sklearn.datasets.load_diabetes"), task="regression", seed=7)
        stored = save_result(newer, DIABETES)
        assert post(srv, f"/v2/repository/models/{DIABETES}/load").json()["version"] == stored.tag.version
        answers = run_load(srv.url, [(f"/models/{DIABETES}/predict", {"features": bunch.data[0].tolist()})] * 40,
                           clients=8, new_connections=True)
        assert {r.status for r in answers} == {200}
        assert {r.body["prediction"] for r in answers} == set(newer.pipeline.predict(bunch.data[:1]).tolist())
        batch = run_load(srv.url, [("/predict_batch", {"instances": X})] * 20, clients=8, new_connections=True)
        assert all(r.body["predictions"] == trained["pipeline"].predict(cancer["X"][:20]).astype(float).tolist()
                   for r in batch)


def test_the_repository_always_needs_the_api_key(keyed_server):
    for path in ("/v2/repository/index", "/v2/repository/models/sklearn_model/load",
                 "/v2/repository/models/sklearn_model/unload"):
        assert post(keyed_server, path).status_code == 401, path
    keyed = {"Authorization": f"Bearer {keyed_server.api_key}"}
    assert post(keyed_server, "/v2/repository/index", headers=keyed).status_code == 200
    assert post(keyed_server, "/v2/repository/models/sklearn_model/load", headers=keyed).json()["state"] == "READY"
