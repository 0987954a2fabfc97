"""Models users bring, as they fit them, served as the model says on every route: /predict,
/predict_batch, /predict_proba and V2 (tritonclient) each compared with the model in process, through a
real `bentoml serve` per model kind; and models that cannot be served stop the server with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import numpy as np
import pandas as pd
import pytest
import requests
import skops.io
import tritonclient.http as triton
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC, LinearSVC

import train as train_cli
from harness.serving import Server
from sklearn_service import model_check
from sklearn_service.model_check import ModelError, inspect
from sklearn_service.serving_model import ServingModel, failing_rows
from sklearn_service.signature import Signature

WEATHER = np.array(["fog", "rain", "sun"])


def weather_data(rows: int, seed: int):
    X, y = make_classification(rows, 4, n_informative=3, n_redundant=0, n_classes=3, class_sep=0.5,
                               random_state=seed)
    return X, WEATHER[y]


def svc_with_probabilities():
    """SVC(probability=True): predict and the argmax of predict_proba disagree on some rows
    (Platt scaling is fitted apart from the decision function; scikit-learn documents it)."""
    X, y = weather_data(300, 0)
    return SVC(probability=True, random_state=0).fit(X, y)


def bank_frame(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": rng.integers(18, 90, rows).astype(float), "balance": rng.exponential(1500, rows),
                      "duration": rng.exponential(250, rows)})
    return X, np.where(X["duration"] + X["balance"] / 10 > 400, "yes", "no")


def linear_svc_on_log_balance():
    """A LinearSVC pipeline on log(balance): it raises on a missing balance and on a balance
    below -1 (log of a negative number is NaN), and has no predict_proba."""
    X, y = bank_frame(400, 0)
    prepare = ColumnTransformer([("log", FunctionTransformer(np.log1p), ["balance"]),
                                 ("rest", "passthrough", ["age", "duration"])])
    return make_pipeline(prepare, StandardScaler(), LinearSVC(random_state=0)).fit(X, y)


def v2_predict(server, X: np.ndarray, outputs=None) -> dict:
    """tritonclient's defaults: binary tensors, and every output the model's metadata lists unless named."""
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30) as client:
        tensor = triton.InferInput("input-0", list(X.shape), "FP64")
        tensor.set_data_from_numpy(X.astype(np.float64))
        requested = outputs and [triton.InferRequestedOutput(name) for name in outputs]
        result = client.infer(server.name, [tensor], outputs=requested)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def as_served(values) -> list:
    """Labels as the API answers them: text as text, numbers as floats."""
    return [v.decode() if isinstance(v, bytes) else v if isinstance(v, str) else float(v) for v in values]


def post(server, path: str, payload) -> requests.Response:
    return requests.post(server.url + path, json=payload, timeout=30)


def assert_every_route_says(server, X: np.ndarray, expected: list) -> None:
    """/predict_batch, /predict for each row, and V2's predict: the model's own predict."""
    batch = post(server, "/predict_batch", {"instances": X.tolist()})
    assert batch.status_code == 200, batch.text
    assert batch.json()["predictions"] == expected
    singles = [post(server, "/predict", {"features": row}).json()["prediction"] for row in X.tolist()]
    assert singles == expected
    assert as_served(v2_predict(server, X)["predict"]) == expected


def serve_stored(home, name: str, model, **extra):
    stored = bentoml.sklearn.save_model(name, model, **extra)
    srv = Server(home, env={"MODEL_TAG": str(stored.tag)}).wait_ready(90)
    srv.name = name
    return srv


# ---- predict is the model's predict, wherever it is asked for ----------------------------------------

@pytest.fixture(scope="module")
def svc_server(bentoml_home, tmp_path_factory):
    model = svc_with_probabilities()
    path = tmp_path_factory.mktemp("svc") / "weather.skops"
    skops.io.dump(model, path)
    assert train_cli.main(["--import-model", str(path), "--name", "weather_svc"]) == 0
    candidates = weather_data(3000, 1)[0]
    differ = model.predict(candidates) != model.classes_[np.argmax(model.predict_proba(candidates), axis=1)]
    assert differ.sum() >= 3, "the data should hold rows where predict and argmax(predict_proba) differ"
    with Server(bentoml_home, env={"MODEL_TAG": "weather_svc:latest"}) as srv:
        srv.name, srv.model = "weather_svc", model
        srv.rows = np.vstack([candidates[differ][:6], candidates[~differ][:6]])
        yield srv


def test_predict_is_the_models_predict_on_every_route(svc_server):
    X, model = svc_server.rows, svc_server.model
    expected = model.predict(X).tolist()
    assert_every_route_says(svc_server, X, expected)
    for row, label, proba in zip(X.tolist(), expected, model.predict_proba(X)):
        answer = post(svc_server, "/predict_proba", {"features": row}).json()
        assert answer["prediction"] == label
        assert answer["probabilities"] == pytest.approx(dict(zip(model.classes_, proba)))
    both = v2_predict(svc_server, X, outputs=["predict", "predict_proba"])
    assert as_served(both["predict"]) == expected
    assert both["predict_proba"] == pytest.approx(model.predict_proba(X))


@pytest.fixture(scope="module")
def linear_svc_server(bentoml_home):
    model = linear_svc_on_log_balance()
    srv = serve_stored(bentoml_home, "bank_linear_svc", model)  # no metadata: every feature may be missing
    srv.model = model
    yield srv
    srv.stop()


def test_a_classifier_without_probabilities_answers_what_it_has(linear_svc_server):
    srv = linear_svc_server
    X = bank_frame(12, 3)[0]
    assert_every_route_says(srv, X.to_numpy(), srv.model.predict(X).tolist())
    meta = requests.get(srv.url + f"/v2/models/{srv.name}", timeout=10).json()
    assert [o["name"] for o in meta["outputs"]] == ["predict"]
    refused = post(srv, "/predict_proba", {"features": X.iloc[0].tolist()})
    assert refused.status_code == 400 and refused.json()["reason"] == "no_probabilities"
    assert "LinearSVC classifier has no predict_proba" in refused.json()["error"]
    metadata = requests.get(srv.url + "/metadata", timeout=10).json()
    assert metadata["task"] == "classification" and metadata["outputs"] == ["predict"]


def test_a_missing_value_the_model_raises_on_is_a_400_before_batching(linear_svc_server):
    srv = linear_svc_server
    row = {"age": 40.0, "balance": None, "duration": 100.0}
    for path, payload in (("/predict", {"features": row}), ("/predict_batch", {"instances": [row]})):
        answer = post(srv, path, payload)
        assert answer.status_code == 400 and answer.json()["reason"] == "missing_value", answer.text
        assert "'balance' may not be missing" in answer.json()["error"]
    v2 = post(srv, f"/v2/models/{srv.name}/infer",
              {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [40.0, None, 100.0]}]})
    assert v2.status_code == 400 and "'balance' may not be missing" in v2.json()["error"]


def test_a_row_the_model_raises_on_fails_alone_and_fast_while_others_are_served(linear_svc_server):
    """1,000 rows whose last one (or every one) the model raises on (balance -5: log of a negative
    number): that request alone gets a 422 naming the rows, quickly; requests sent meanwhile are answered."""
    srv = linear_svc_server
    X = bank_frame(1000, 4)[0]
    last_bad, all_bad = X.to_numpy().tolist(), X.assign(balance=-5.0).to_numpy().tolist()
    last_bad[-1][1] = -5.0
    innocent = X.iloc[:60]
    expected = srv.model.predict(innocent).tolist()

    def send_bad(rows):
        start = time.perf_counter()
        answer = post(srv, "/predict_batch", {"instances": rows})
        return answer, time.perf_counter() - start

    with ThreadPoolExecutor(12) as pool:
        refused = [pool.submit(send_bad, rows) for rows in (last_bad, all_bad, last_bad)]
        answers = list(pool.map(lambda row: post(srv, "/predict", {"features": row}), innocent.to_numpy().tolist()))
        refused = [f.result() for f in refused]
    for (answer, seconds), named in zip(refused, ("[999]", "[0, 1, 2, 3", "[999]")):
        assert answer.status_code == 422 and answer.json()["reason"] == "model_refused_row", answer.text
        assert f"instance(s) {named}" in answer.json()["error"] and seconds < 1.0, seconds
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert [a.json()["prediction"] for a in answers] == expected


# ---- outlier detectors and clusterers: their own task, their own predict -------------------------------

@pytest.fixture(scope="module")
def outlier_server(bentoml_home):
    X = np.random.default_rng(0).normal(size=(300, 3))
    model = IsolationForest(n_estimators=50, random_state=0).fit(X)
    srv = serve_stored(bentoml_home, "outliers", model)
    srv.model = model
    yield srv
    srv.stop()


def test_an_outlier_detector_is_served_as_one(outlier_server):
    srv, model = outlier_server, outlier_server.model
    X = np.vstack([np.random.default_rng(1).normal(size=(8, 3)), [[6.0, -6.0, 6.0]]])
    expected = model.predict(X).astype(float).tolist()
    assert -1.0 in expected and 1.0 in expected
    assert_every_route_says(srv, X, expected)
    answer = v2_predict(srv, X)
    assert set(answer) == {"predict", "score_samples"}
    assert answer["score_samples"] == pytest.approx(model.score_samples(X))
    meta = requests.get(srv.url + "/metadata", timeout=10).json()
    assert meta["task"] == "outlier_detection" and meta["outputs"] == ["predict", "score_samples"]
    refused = post(srv, "/predict_proba", {"features": X[0].tolist()})
    assert refused.status_code == 400 and refused.json()["reason"] == "not_a_classifier"
    assert "outlier_detection" in refused.json()["error"]


def test_a_clusterer_is_served_as_one(bentoml_home):
    X = np.random.default_rng(2).normal(size=(200, 2)) + np.repeat([[0, 0], [5, 5], [0, 5]], [70, 70, 60], axis=0)
    model = KMeans(n_clusters=3, n_init=3, random_state=0).fit(X)
    srv = serve_stored(bentoml_home, "clusters", model)
    try:
        assert_every_route_says(srv, X[::20], model.predict(X[::20]).astype(float).tolist())
        meta = requests.get(srv.url + "/metadata", timeout=10).json()
        assert meta["task"] == "clustering" and meta["classes"] is None and meta["outputs"] == ["predict"]
    finally:
        srv.stop()


# ---- models that cannot be served stop the server with one line ----------------------------------------

def refused_start(home, env: dict) -> str:
    srv = Server(home, env=env)
    try:
        code = srv.process.wait(timeout=120)
    finally:
        srv.stop()
    log = srv.log()
    assert code != 0, log
    assert "Traceback" not in log, log
    return log


def test_a_model_with_several_outputs_per_row_does_not_start(bentoml_home):
    X = np.random.default_rng(0).normal(size=(100, 3))
    stored = bentoml.sklearn.save_model("wage_two_targets", Ridge().fit(X, np.c_[X[:, 0], 2 * X[:, 1]]))
    log = refused_start(bentoml_home, {"MODEL_TAG": str(stored.tag)})
    assert f"error: model {stored.tag} answers 2 values per row (a multi-output Ridge)" in log


def test_an_unknown_model_tag_names_it_and_the_models_there(bentoml_home):
    model = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    for i in range(21):  # more than the line lists, all sorting before the one meant
        bentoml.sklearn.save_model(f"aaa_{i:02d}", model)
    bentoml.sklearn.save_model("wage_hgb", model)
    log = refused_start(bentoml_home, {"MODEL_TAG": "wage_hbg:latest"})
    # the closest names come first, however many models the store holds
    assert "error: no model wage_hbg:latest in the model store (MODEL_TAG) (did you mean wage_hgb?); " \
           "models there: wage_hgb:" in log
    assert "wage_hgb:" in log and "NoneType" not in log


def test_an_invalid_model_tag_is_one_line_not_a_traceback(bentoml_home):
    log = refused_start(bentoml_home, {"MODEL_TAG": "a:b\nforged line"})
    assert "error: MODEL_TAG 'a:b\\nforged line' is not a model tag" in log
    assert "\nforged line" not in log  # escaped: the tag cannot start a log line of its own


@pytest.mark.parametrize("tag", ["Bad Tag!", "a:b:c", "", ":v", "x" * 300])
def test_invalid_model_tags_are_refused_by_the_service_module(bentoml_home, tag):
    """What `bentoml serve` imports first; the same check without a server, for a table of tags."""
    run = subprocess.run([sys.executable, "-c", "import service"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BENTOML_HOME": str(bentoml_home), "MODEL_TAG": tag})
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: MODEL_TAG '"), run.stderr
    assert len(run.stderr.strip().splitlines()[-1]) < 200


def test_a_model_whose_code_cannot_be_imported_does_not_start(bentoml_home, tmp_path, monkeypatch):
    (tmp_path / "user_features.py").write_text("def doubled(X):\n    return X * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_features

    X = np.random.default_rng(0).normal(size=(50, 2))
    model = make_pipeline(FunctionTransformer(user_features.doubled), LinearRegression()).fit(X, X[:, 0])
    stored = bentoml.sklearn.save_model("uses_user_code", model)
    sys.modules.pop("user_features")
    start = time.monotonic()
    log = refused_start(bentoml_home, {"MODEL_TAG": str(stored.tag)})
    assert f"error: model {stored.tag} cannot be loaded: ModuleNotFoundError: No module named 'user_features'" \
        in log and time.monotonic() - start < 60


# ---- in process: the start-up check and the search for failing rows --------------------------------------

def facts_of(model):
    return inspect(model, {}, "m")


@pytest.mark.parametrize("make, task, outputs", [
    (lambda X, y: SVC().fit(X, y), "classification", ()),
    (lambda X, y: SVC(probability=True).fit(X, y), "classification", ("predict_proba",)),
    (lambda X, y: LinearSVC().fit(X, y), "classification", ()),
    (lambda X, y: Ridge().fit(X, X[:, 0]), "regression", ()),
    (lambda X, y: IsolationForest(n_estimators=5).fit(X), "outlier_detection", ("score_samples",)),
    (lambda X, y: KMeans(2, n_init=1).fit(X), "clustering", ()),
])
def test_the_check_finds_the_task_and_outputs_from_the_estimator(make, task, outputs):
    X, y = weather_data(60, 0)
    facts = facts_of(make(X, y))
    assert facts.signature.task == task and facts.outputs == outputs
    assert (facts.signature.classes is not None) is (task == "classification")


def test_the_check_finds_which_features_refuse_missing_values():
    X = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0] * 10, "b": np.arange(40.0)})
    y = np.arange(40) % 2
    lenient = HistGradientBoostingClassifier(max_iter=3).fit(X, y)
    assert all(f.nullable for f in facts_of(lenient).signature.features)
    per_feature = make_pipeline(ColumnTransformer([("a", SimpleImputer(), ["a"]), ("b", "passthrough", ["b"])]),
                                LinearSVC()).fit(X, y)
    assert [f.nullable for f in facts_of(per_feature).signature.features] == [True, False]


def test_the_check_runs_once_and_the_workers_read_its_answer(bentoml_home, monkeypatch):
    X = np.random.default_rng(0).normal(size=(30, 2))
    stored = bentoml.sklearn.save_model("checked_once", IsolationForest(n_estimators=5).fit(X))
    model = bentoml.models.BentoModel(str(stored.tag))
    monkeypatch.setenv(model_check.FACTS_ENV, "")  # restored after the test
    first = model_check.facts(model)[1]
    assert first.signature.task == "outlier_detection" and first.outputs == ("score_samples",)

    def no_second_check(*args, **kwargs):
        raise AssertionError("checked again")

    monkeypatch.setattr(model_check.subprocess, "run", no_second_check)
    assert model_check.facts(model)[1] == first  # as a worker started by the server reads it


def test_multi_output_models_are_refused_by_the_check():
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ModelError, match="answers 2 values per row"):
        facts_of(Ridge().fit(X, np.c_[X[:, 0], X[:, 1]]))


def test_failing_rows_are_found_in_log_n_calls():
    rows = np.arange(800.0)[:, None]
    calls = []

    def answer(part):
        calls.append(len(part))
        if (part == 799).any():
            raise ValueError("no")
        return part[:, 0]

    out = np.full(800, np.nan)
    failed = failing_rows(lambda part: answer(rows[part]), np.arange(800), out)
    assert [i for i, _ in failed] == [799] and len(calls) <= 2 * 10 + 1
    np.testing.assert_array_equal(out[:799], np.arange(799.0))
    assert np.isnan(out[799])


def test_serving_model_predict_all_is_predict_then_probabilities():
    model = svc_with_probabilities()
    X = weather_data(500, 1)[0]
    served = ServingModel(model, Signature.from_estimator(model), outputs=("predict_proba",)).predict_all(X)
    np.testing.assert_array_equal(model.classes_[served[:, 0].astype(int)], model.predict(X))
    np.testing.assert_array_equal(served[:, 1:], model.predict_proba(X))


def test_the_check_reads_a_stored_model_as_bentoml_does(trained, cancer):
    """The check reads the model's folder itself, without importing BentoML: the same tag, module,
    metadata and model as BentoML's own reader and bentoml.sklearn.load_model; another framework's
    model is refused by both."""
    stored = bentoml.models.get(trained["tag"])
    folder = model_check.StoredFolder.read(stored.path)
    assert (folder.tag, folder.module, folder.metadata) == (str(stored.tag), stored.info.module, stored.info.metadata)
    X = cancer["X"][:50]
    np.testing.assert_array_equal(folder.load().predict_proba(X), bentoml.sklearn.load_model(stored).predict_proba(X))

    other = bentoml.picklable_model.save_model("not_sklearn", LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]))
    with pytest.raises(Exception, match="not loading with bentoml.sklearn"):
        bentoml.sklearn.load_model(other)
    assert model_check.check(model_check.StoredFolder.read(other.path))["refused"] == \
        f"model {other.tag} cannot be loaded: ValueError: saved with bentoml.picklable_model, not bentoml.sklearn"


def test_a_model_needing_a_library_not_installed_is_refused_with_the_command(capsys):
    from sklearn_service.model_check import REFUSED, main

    stored = bentoml.sklearn.save_model("needs_a_library", LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]),
                                        metadata={"requires": {"lib_not_here": "lib-not-here==1.0"}})
    assert main([stored.path]) == REFUSED
    err = capsys.readouterr().err
    assert f"model {stored.tag} cannot be loaded: the model needs lib-not-here==1.0, which is not installed" in err
