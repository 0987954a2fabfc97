"""Explanations served: /explain and /explain_batch on the default model equal explain.py in
process and shap's TreeExplainer; class choice, top, refusals as /predict's, the V2
"explanation" output, their metrics; and a model that cannot be explained refuses only that."""

from __future__ import annotations

import bentoml
import numpy as np
import pytest
import requests
from sklearn.neighbors import KNeighborsClassifier

from sklearn_service import model_check
from sklearn_service.explain import Explainer, for_stored_model
from sklearn_service.signature import Signature
from sklearn_service.csv_data import Dataset, load_csv_dataset
from sklearn_service.model_store import save_result
from sklearn_service.training import load_default_dataset, train
from harness.prometheus_text import delta, scrape
from harness.serving import Server

TOLERANCE = 1e-6
ROWS = 20
V2_INFER = "/v2/models/sklearn_model/infer"


@pytest.fixture(scope="module")
def explained(trained, cancer):
    """The first rows of the data, and their explanations by explain.py in this process."""
    X = cancer["X"][:ROWS]
    explainer = Explainer.for_pipeline(trained["pipeline"], Signature.from_metadata(trained["metadata"]))
    return X, explainer.explain(X)


def explain_batch(post, X, **extra) -> list[dict]:
    answer = post("/explain_batch", {"instances": X.tolist(), **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()["explanations"]


def in_feature_order(body: dict, names: list[str]) -> np.ndarray:
    return np.array([body["contributions"][name] for name in names])


def test_served_explanations_equal_explain_py_and_shap(post, trained, cancer, explained):
    import shap

    X, expected = explained
    pipeline, names = trained["pipeline"], cancer["names"]
    model_input = pipeline[:-1].transform(X) if len(pipeline) > 1 else X
    values = np.asarray(shap.TreeExplainer(pipeline[-1], feature_perturbation="tree_path_dependent")
                        .shap_values(model_input, check_additivity=False))  # (rows, features, classes)
    predicted = pipeline.predict(X)
    served = explain_batch(post, X)
    single = post("/explain", {"features": X[0].tolist()})
    assert single.status_code == 200, single.text
    one = single.json()  # alone or in a batch: the same numbers, summed in another order
    assert {k: v for k, v in one.items() if not isinstance(v, (dict, float))} == \
        {k: v for k, v in served[0].items() if not isinstance(v, (dict, float))}
    np.testing.assert_allclose(in_feature_order(one, names), in_feature_order(served[0], names), rtol=0, atol=1e-12)
    contributions = np.array([in_feature_order(body, names) for body in served])
    k = np.searchsorted(pipeline.classes_, predicted)
    np.testing.assert_allclose(contributions, expected.contributions, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(contributions, values[np.arange(ROWS), :, k], rtol=0, atol=TOLERANCE)
    for body, label, proba, e_base, e_out in zip(served, predicted, pipeline.predict_proba(X).max(axis=1),
                                                 expected.base_values, expected.outputs):
        assert body["prediction"] == body["explained_class"] == float(label)
        assert body["output"] == "probability" and body["rest"] == 0.0
        assert list(body["contributions"]) == sorted(names, key=lambda n: -abs(body["contributions"][n]))
        assert body["base_value"] == pytest.approx(e_base, abs=TOLERANCE)
        assert body["value"] == pytest.approx(proba, abs=TOLERANCE) == pytest.approx(e_out, abs=TOLERANCE)
        # additive: the base value and the contributions make the explained output
        assert body["base_value"] + sum(body["contributions"].values()) == pytest.approx(body["value"], abs=TOLERANCE)


def test_a_chosen_class_and_top(post, trained, cancer):
    X, names = cancer["X"][:3], cancer["names"]
    proba = trained["pipeline"].predict_proba(X)
    by_class = [explain_batch(post, X, explained_class=label) for label in (0, "1")]
    for k, answers in enumerate(by_class):
        for body, p in zip(answers, proba[:, k]):
            assert body["explained_class"] == float(k)
            assert body["value"] == pytest.approx(p, abs=TOLERANCE)
    # two classes: what raises one probability lowers the other as much
    np.testing.assert_allclose([in_feature_order(b, names) for b in by_class[0]],
                               [-in_feature_order(b, names) for b in by_class[1]], rtol=0, atol=TOLERANCE)
    full = post("/explain", {"features": X[0].tolist(), "explained_class": 1.0}).json()
    top = post("/explain", {"features": X[0].tolist(), "explained_class": 1.0, "top": 3}).json()
    assert list(top["contributions"].items()) == list(full["contributions"].items())[:3]
    assert top["rest"] == pytest.approx(sum(list(full["contributions"].values())[3:]), abs=TOLERANCE)
    assert top["base_value"] + sum(top["contributions"].values()) + top["rest"] == \
        pytest.approx(top["value"], abs=TOLERANCE)


def test_bad_input_is_refused_as_predict_refuses_it(post, cancer):
    row = cancer["X"][0].tolist()
    for path, body in [("/predict", {"features": row[:-1]}), ("/predict_batch", {"instances": []}),
                       ("/predict_batch", {"instances": [row, row[:3]]})]:
        expected = post(path, body)
        answer = post(path.replace("predict", "explain"), body)
        assert answer.status_code == expected.status_code == 400
        assert answer.json() == expected.json()
    unknown = post("/explain", {"features": row, "explained_class": 7})
    assert unknown.status_code == 400 and unknown.json()["reason"] == "unknown_class"
    assert "[0, 1]" in unknown.json()["error"]
    for top in (0, True, 2.5, "3"):  # a count: a whole number from 1, not a boolean or text
        refused = post("/explain", {"features": row, "top": top})
        assert refused.status_code == 400 and refused.json()["detail"][0]["loc"] == ["top"], top


def test_the_v2_explanation_output_is_answered_when_named(server, post, cancer):
    X, names = cancer["X"][:4], cancer["names"]
    tensor = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64", "data": X.ravel().tolist()}
    metadata = requests.get(server.url + "/v2/models/sklearn_model", timeout=10).json()
    assert {"name": "explanation", "datatype": "FP64", "shape": [-1, len(names)]} in metadata["outputs"]
    plain = post(V2_INFER, {"inputs": [tensor]}).json()
    assert "explanation" not in [o["name"] for o in plain["outputs"]]
    named = post(V2_INFER, {"inputs": [tensor], "outputs": [{"name": "predict"}, {"name": "explanation"}]})
    assert named.status_code == 200, named.text
    outputs = {o["name"]: o for o in named.json()["outputs"]}
    assert outputs["explanation"]["shape"] == [4, len(names)]
    contributions = np.array(outputs["explanation"]["data"]).reshape(4, len(names))
    served = explain_batch(post, X)
    np.testing.assert_allclose(contributions, [in_feature_order(b, names) for b in served], rtol=0, atol=1e-12)
    assert outputs["predict"]["data"] == [b["prediction"] for b in served]


def test_explanations_are_counted_per_endpoint(server, post, cancer):
    before = scrape(server.url)
    X = cancer["X"][:5]
    assert post("/explain", {"features": X[0].tolist()}).ok
    explain_batch(post, X)
    assert post("/explain", {"features": X[0].tolist()[:-1]}).status_code == 400
    after = scrape(server.url)
    assert delta(before, after, "ml_predictions_total", endpoint="/explain", outcome="success") == 1
    assert delta(before, after, "ml_predictions_total", endpoint="/explain_batch", outcome="success") == 5
    assert delta(before, after, "ml_rejected_requests_total", endpoint="/explain", reason="wrong_length") == 1
    assert delta(before, after, "ml_prediction_latency_seconds_count", endpoint="/explain") == 1


def test_a_model_that_cannot_be_explained_says_so_and_still_predicts(bentoml_home, cancer):
    X = cancer["X"]
    model = KNeighborsClassifier().fit(X, load_default_dataset().y.to_numpy())
    stored = bentoml.sklearn.save_model("neighbours", model)
    with Server(bentoml_home, env={"MODEL_TAG": str(stored.tag)}).wait_ready(90) as srv:
        row = X[0].tolist()
        predicted = requests.post(srv.url + "/predict", json={"features": row}, timeout=30)
        assert predicted.status_code == 200 and predicted.json()["prediction"] == float(model.predict(X[:1])[0])
        for path, body in [("/explain", {"features": row}), ("/explain_batch", {"instances": [row]})]:
            refused = requests.post(srv.url + path, json=body, timeout=30)
            assert refused.status_code == 400, refused.text
            assert refused.json()["reason"] == "not_explainable"
            assert "KNeighborsClassifier" in refused.json()["error"]
        v2 = requests.post(srv.url + "/v2/models/neighbours/infer", timeout=30, json={
            "inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}],
            "outputs": [{"name": "explanation"}]})
        assert v2.status_code == 400 and "cannot be explained" in v2.json()["error"]
        metadata = requests.get(srv.url + "/v2/models/neighbours", timeout=10).json()
        assert "explanation" not in [o["name"] for o in metadata["outputs"]]


def test_a_regressor_explains_its_value(regressor_server):
    X = regressor_server.features[:3]
    answers = [requests.post(regressor_server.url + "/explain", json={"features": row}, timeout=30).json()
               for row in X.tolist()]
    for body, value in zip(answers, regressor_server.pipeline.predict(X)):
        assert body["output"] == "value" and body["explained_class"] is None
        assert body["prediction"] == pytest.approx(value) and body["value"] == pytest.approx(value, abs=TOLERANCE)
        assert body["base_value"] + sum(body["contributions"].values()) == pytest.approx(value, abs=TOLERANCE)
    chosen = requests.post(regressor_server.url + "/explain", json={"features": X[0].tolist(), "explained_class": 1},
                           timeout=30)
    assert chosen.status_code == 400 and chosen.json()["reason"] == "not_a_classifier"


def test_a_mixed_type_linear_model_is_explained_from_its_stored_reference(bentoml_home, tmp_path):
    """Text categories (one number each, whatever their one-hot columns), gaps, class labels as text;
    the linear model's background is the reference sample training stored with it."""
    import json

    from sklearn_service.drift_report import encode
    from sklearn_service.model_store import stored_signature
    from harness.mixed_data import write_penguins_csv

    frame = write_penguins_csv(tmp_path / "penguins.csv")
    result = train(load_csv_dataset(str(tmp_path / "penguins.csv"), "species"), "logistic_regression")
    stored = save_result(result, "penguins_linear")
    rows = json.loads(frame.drop(columns="species").iloc[:6].to_json(orient="records"))
    signature = stored_signature(stored)
    expected = for_stored_model(result.pipeline, signature, stored.path).explain(
        encode(signature, frame.iloc[:6], "species")[0])
    with Server(bentoml_home, env={"MODEL_TAG": str(stored.tag)}).wait_ready(90) as srv:
        served = requests.post(srv.url + "/explain_batch", json={"instances": rows}, timeout=30)
        assert served.status_code == 200, served.text
        other = requests.post(srv.url + "/explain", json={"features": rows[0], "explained_class": "Gentoo"},
                              timeout=30).json()
    answers = served.json()["explanations"]
    predicted = result.pipeline.predict(frame.drop(columns="species").iloc[:6]).tolist()
    assert [b["prediction"] for b in answers] == predicted
    assert [b["explained_class"] for b in answers] == [b["prediction"] for b in answers]
    assert {b["output"] for b in answers} == {"log_odds"} and set(answers[0]["contributions"]) == set(signature.names)
    np.testing.assert_allclose([in_feature_order(b, signature.names) for b in answers], expected.contributions,
                               rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose([b["base_value"] for b in answers], expected.base_values, rtol=0, atol=TOLERANCE)
    assert other["explained_class"] == "Gentoo"
    assert other["base_value"] + sum(other["contributions"].values()) == pytest.approx(other["value"], abs=TOLERANCE)


# ---- in process: what the start-up check and the runner build ----------------------------------------

def test_the_start_up_check_names_the_output_or_the_reason(trained, tmp_path):
    signature = Signature.from_metadata(trained["metadata"])
    assert model_check.explainability(trained["pipeline"], signature, str(tmp_path)) == ("probability", None)
    X = load_default_dataset()
    output, reason = model_check.explainability(KNeighborsClassifier().fit(X.X.to_numpy(), X.y.to_numpy()),
                                                signature, str(tmp_path))
    assert output is None and "cannot explain KNeighborsClassifier exactly" in reason


def test_a_stored_linear_model_is_explained_from_its_reference_sample_or_the_feature_means(tmp_path):
    data = load_default_dataset()
    result = train(Dataset(data.X, data.y, data.source, data.kinds), "logistic_regression")
    stored = save_result(result, "explained_linear")
    signature = result.signature
    reference = result.reference[signature.names].to_numpy(dtype=float)
    scaled = result.pipeline[:-1].transform(reference).mean(axis=0)
    model = result.pipeline[-1]
    from_sample = for_stored_model(result.pipeline, signature, stored.path)
    assert from_sample.core.base == pytest.approx(model.coef_ @ scaled + model.intercept_, abs=TOLERANCE)
    # no sample stored: the signature's means, which for a scaler's input give its own mean
    from_means = for_stored_model(result.pipeline, signature, tmp_path)
    means = np.array([[f.stats["mean"] for f in signature.features]])
    assert from_means.core.base == pytest.approx(model.coef_ @ result.pipeline[:-1].transform(means)[0]
                                                 + model.intercept_, abs=TOLERANCE)
    rows = data.X.to_numpy()[:5]
    e = from_means.explain(rows)
    np.testing.assert_allclose(e.base_values + e.contributions.sum(axis=1), e.outputs, rtol=0, atol=TOLERANCE)


def test_in_the_core_requests_asking_for_different_classes_share_a_runner_call(trained, cancer):
    import asyncio

    from prometheus_client import CollectorRegistry

    from sklearn_service import config
    from sklearn_service.model_check import ModelFacts
    from sklearn_service.prediction_core import EXPLAIN_ROWS_PER_CALL, EXPLANATION, PredictionCore
    from sklearn_service.serving_model import ServingModel

    stored = bentoml.models.get(trained["tag"])
    signature, pipeline = Signature.from_metadata(stored.info.metadata), trained["pipeline"]
    model = ServingModel(pipeline, signature, outputs=("predict_proba",),
                         explainer=for_stored_model(pipeline, signature, stored.path))
    calls = []

    async def call_runner(method: str, rows: np.ndarray) -> np.ndarray:
        calls.append((method, len(rows)))
        return model.explain(rows)

    facts = ModelFacts(signature, "RandomForestClassifier", ("predict_proba",), "probability")
    core = PredictionCore(stored.info, signature, facts, call_runner, config.app(), {}, registry=CollectorRegistry())
    X = cancer["X"]

    async def together():
        asked = [core.answer("/explain", [X[0].tolist()], outputs=("predict", "predict_proba", EXPLANATION),
                             one_row=True, explained_class=label) for label in (0, 1.0, None)]
        return await asyncio.gather(*asked)

    answers = asyncio.run(together())
    # the first goes alone; the two that waited for it leave together, each with its own class, and
    # each runner call answers predict, predict_proba and the explanation
    assert calls == [("explain", 1), ("explain", 2)]
    proba = pipeline.predict_proba(X[:1])[0]
    predicted = float(pipeline.predict(X[:1])[0])
    for answer, label in zip(answers, (0.0, 1.0, predicted)):
        assert answer.explained.classes == [label] and answer.predictions == [predicted]
        assert answer.explained.values[0] == pytest.approx(proba[int(label)], abs=TOLERANCE)
        assert answer.outputs["predict_proba"][0] == pytest.approx(proba)
    calls.clear()
    many = asyncio.run(core.answer("/explain_batch", X[:150].tolist(), outputs=("predict", EXPLANATION)))
    assert [rows for _, rows in calls] == [EXPLAIN_ROWS_PER_CALL] * 2 + [150 - 2 * EXPLAIN_ROWS_PER_CALL]
    assert many.outputs[EXPLANATION].shape == (150, len(signature.features))
