"""Mixed-type models end to end through a real `bentoml serve`: trained from a CSV with text,
booleans and gaps, or brought by the user (.skops, .joblib); labels as trained; per-feature errors."""

from __future__ import annotations

import json
import time

import bentoml
import joblib
import numpy as np
import pytest
import requests
import skops.io
from hypothesis import given
from hypothesis import strategies as st

import train as train_cli
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from harness.byo_models import flipper_regressor, penguin_classifier, penguin_frame
from harness.hostile import ANY_JSON, HOSTILE, assert_clear_client_answer, fuzz_openapi
from harness.mixed_data import FEATURES, json_rows
from harness.prometheus_text import delta, scrape
from harness.serving import Server, write_config


def post(server, path, payload):
    return requests.post(server.url + path, json=payload, timeout=30)


def test_trained_mixed_model_answers_as_the_pipeline_does_with_labels(penguins_server):
    srv, rows = penguins_server, json_rows(penguins_server.frame.drop(columns=["species"]))
    expected = srv.pipeline.predict(srv.model_frame).tolist()
    response = post(srv, "/predict_batch", {"instances": rows})
    assert response.status_code == 200 and response.json()["predictions"] == expected
    positional = [[row[name] for name in FEATURES] for row in rows[:20]]
    assert post(srv, "/predict_batch", {"instances": positional}).json()["predictions"] == expected[:20]
    single = post(srv, "/predict", {"features": rows[7]}).json()
    assert single == {"prediction": expected[7]} and isinstance(single["prediction"], str)
    proba = post(srv, "/predict_proba", {"features": rows[7]}).json()
    assert set(proba["probabilities"]) == {"Adelie", "Chinstrap", "Gentoo"}
    assert proba["probabilities"] == pytest.approx(dict(zip(
        srv.pipeline.classes_, srv.pipeline.predict_proba(srv.model_frame.iloc[[7]])[0])))


@pytest.mark.parametrize("features, reason, words", [
    ({"island": "Dream", "bill_length_mm": "long", "flipper_length_mm": 200, "sex": "male", "tagged": True},
     "wrong_type", "feature 'bill_length_mm' must be a number, got a string"),
    ({"island": 2, "bill_length_mm": 40.0, "flipper_length_mm": 200, "sex": "male", "tagged": True},
     "wrong_type", "feature 'island' must be a category"),
    ({"island": None, "bill_length_mm": 40.0, "flipper_length_mm": 200, "sex": "male", "tagged": True},
     "missing_value", "feature 'island' may not be missing"),
    ({"island": "Dream", "bill_length_mm": 40.0, "flipper_length_mm": 200, "sex": "male", "tagged": "yes"},
     "wrong_type", "feature 'tagged' must be true or false"),
    ({"island": "Dream", "beak": 40.0, "tagged": True}, "unknown_feature", "['beak']"),
    (["Dream", 40.0, 200], "wrong_length", "expected 5 features, got 3"),
])
def test_bad_mixed_rows_name_the_feature(penguins_server, features, reason, words):
    response = post(penguins_server, "/predict", {"features": features})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason and words in response.json()["error"]


def test_unseen_categories_are_answered_and_counted(penguins_server):
    before = scrape(penguins_server.url)
    row = {"island": "Atlantis", "bill_length_mm": 40.0, "flipper_length_mm": 200, "sex": None, "tagged": False}
    assert post(penguins_server, "/predict", {"features": row}).status_code == 200
    after = scrape(penguins_server.url)
    assert delta(before, after, "ml_unseen_category_total", feature="island") == 1
    assert delta(before, after, "ml_unseen_category_total", feature="sex") == 0


def test_payload_log_holds_rows_as_clients_sent_them(penguins_server):
    row = {"island": "Atlantis", "bill_length_mm": None, "flipper_length_mm": 201, "sex": "female", "tagged": True}
    label = post(penguins_server, "/predict", {"features": row}).json()["prediction"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for f in penguins_server.payload_logs.rglob("data.*.log") for line in
                 f.read_text().splitlines()]
        logged = [line for line in lines if line.get("island") == "<unseen>"]
        if logged:
            break
        time.sleep(0.2)
    assert logged, lines[-3:]
    assert logged[-1]["bill_length_mm"] is None and logged[-1]["flipper_length_mm"] == 201.0
    assert logged[-1]["sex"] == "female" and logged[-1]["prediction"] == label
    assert logged[-1]["model_tag"] == f"{penguins_server.name}:{penguins_server.version}"  # several models share a log


@HOSTILE
@given(value=ANY_JSON, slot=st.sampled_from(FEATURES), batch=st.booleans())
def test_any_value_in_any_feature_gets_an_answer_or_a_clear_4xx(penguins_server, value, slot, batch):
    row = {"island": "Dream", "bill_length_mm": 40.0, "flipper_length_mm": 200, "sex": "male", "tagged": False,
           slot: value}
    payload = {"instances": [row, list(row.values())]} if batch else {"features": row}
    body = json.dumps(payload)  # NaN and Infinity literals included
    assert_clear_client_answer(requests.post(penguins_server.url + ("/predict_batch" if batch else "/predict"),
                                             data=body, timeout=10, headers={"Content-Type": "application/json"}))


def test_openapi_fuzzing_of_the_typed_schema_finds_no_server_errors(penguins_server, tmp_path):
    fuzz_openapi(penguins_server.url, tmp_path)


def test_openapi_describes_the_features_from_the_signature(penguins_server):
    doc = requests.get(penguins_server.url + "/docs.json", timeout=10).json()
    text = str(doc)
    assert "'enum': ['Biscoe', 'Dream', 'Torgersen']" in text and "bill_length_mm" in text
    meta = requests.get(penguins_server.url + "/metadata", timeout=10).json()
    schema = meta["input_schema"]
    assert schema["properties"]["island"]["enum"] == ["Biscoe", "Dream", "Torgersen"]
    assert set(schema["required"]) == {"island", "tagged"}
    assert post(penguins_server, "/predict", {"features": schema["example"]}).status_code == 200


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byo")
    model = penguin_classifier()
    skops.io.dump(model, folder / "penguins.skops")
    joblib.dump(model, folder / "penguins.joblib")
    X, y = penguin_frame(120, seed=11)
    X.assign(species=y).to_csv(folder / "reference.csv", index=False)
    return {"folder": folder, "model": model, "rows": penguin_frame(60, seed=12)[0]}


@pytest.mark.parametrize("file, extra", [("penguins.skops", []), ("penguins.joblib", ["--trust-pickle"])])
def test_imported_pipeline_serves_the_same_predictions(byo, bentoml_home, file, extra):
    name = "byo_" + file.split(".")[1]
    args = ["--import-model", str(byo["folder"] / file), "--reference-data", str(byo["folder"] / "reference.csv"),
            "--target", "species", "--name", name, *extra]
    assert train_cli.main(args) == 0
    rows = byo["rows"]
    with Server(bentoml_home, env={"MODEL_TAG": f"{name}:latest"}) as srv:
        response = post(srv, "/predict_batch", {"instances": json_rows(rows)})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == byo["model"].predict(rows).tolist()
        proba = post(srv, "/predict_proba", {"features": json_rows(rows)[0]}).json()["probabilities"]
        assert proba == pytest.approx(dict(zip(byo["model"].classes_, byo["model"].predict_proba(rows.iloc[:1])[0])))


def test_regression_import_serves_and_unseen_categories_can_be_refused(bentoml_home, tmp_path):
    model, frame = flipper_regressor()
    skops.io.dump(model, tmp_path / "flipper.skops")
    frame.to_csv(tmp_path / "flipper.csv", index=False)
    assert train_cli.main(["--import-model", str(tmp_path / "flipper.skops"), "--reference-data",
                           str(tmp_path / "flipper.csv"), "--target", "flipper_length_mm", "--name", "flipper"]) == 0
    config = write_config(tmp_path, lambda s: s["app"].update(unknown_categories="reject"))
    rows = frame.drop(columns=["flipper_length_mm"]).iloc[:25]
    with Server(bentoml_home, env={"MODEL_TAG": "flipper:latest", "SERVICE_CONFIG": str(config)}) as srv:
        response = post(srv, "/predict_batch", {"instances": json_rows(rows)})
        assert response.status_code == 200
        assert response.json()["predictions"] == pytest.approx(model.predict(rows).tolist(), rel=1e-12)
        unseen = {**json_rows(rows)[0], "island": "Atlantis"}
        refused = post(srv, "/predict", {"features": unseen})
        assert refused.status_code == 400 and refused.json()["reason"] == "unknown_category"
        assert "'island' has no category 'Atlantis'" in refused.json()["error"]
        assert post(srv, "/predict_proba", {"features": json_rows(rows)[0]}).status_code == 400


def test_a_model_saved_without_metadata_still_serves(bentoml_home):
    model, frame = flipper_regressor()
    bentoml.sklearn.save_model("bare_model", model)
    # inferred from the estimator alone, every feature is a number or (from its encoder) a category
    rows = frame.drop(columns=["flipper_length_mm"]).iloc[:10].astype({"tagged": int})
    with Server(bentoml_home, env={"MODEL_TAG": "bare_model:latest"}) as srv:
        response = post(srv, "/predict_batch", {"instances": json_rows(rows)})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == pytest.approx(model.predict(rows).tolist(), rel=1e-12)
        meta = requests.get(srv.url + "/metadata", timeout=10).json()
        assert meta["input_schema"]["properties"]["island"]["enum"] == ["Biscoe", "Dream", "Torgersen", None]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-deps)")
def test_swagger_page_shows_typed_features_and_its_example_request_succeeds(penguins_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 2000})
        page.goto(penguins_server.url + "/")
        operation = page.locator("#operations-Service_APIs-SklearnService__predict")
        operation.locator(".opblock-summary").click()
        request_body = operation.locator(".opblock-section-request-body")
        request_body.get_by_text("Schema", exact=True).first.click()
        collapsed = request_body.locator("button.model-box-control[aria-expanded=false]")
        for _ in range(20):  # open the Features model, then each feature in it
            if not collapsed.count():
                break
            collapsed.first.click()
        schema = request_body.inner_text()
        assert "island*" in schema and "[ Biscoe, Dream, Torgersen ]" in schema, schema
        assert "tagged*\tboolean" in schema and "integer" in schema.split("flipper_length_mm{")[1], schema
        assert "sex\t" in schema and "sex*" not in schema  # may be missing: not required
        operation.locator("button.try-out__btn").click()
        sent = json.loads(operation.locator("textarea.body-param__text").input_value())
        assert set(sent["features"]) == set(FEATURES) and isinstance(sent["features"]["tagged"], bool)
        operation.locator("button.execute").click()
        answer = operation.locator(".live-responses-table tbody .response-col_status").first
        answer.wait_for(timeout=20_000)
        assert answer.inner_text().strip() == "200"
        body = json.loads(operation.locator(".live-responses-table .response-col_description pre").first.inner_text())
        assert body["prediction"] in ("Adelie", "Chinstrap", "Gentoo")
        page.screenshot(path=str(tmp_path / "swagger-try-it-out.png"))
        browser.close()


def test_a_model_saved_without_metadata_refuses_the_missing_values_it_raises_on(bentoml_home):
    """Whether such a model takes missing values is found at start-up (model_check): a model that
    raises on them gets a 400 naming the feature, before batching, never its batch-mates' error."""
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(X, X[:, 0] > 0)  # refuses NaN
    bentoml.sklearn.save_model("refuses_nan", model)
    with Server(bentoml_home, env={"MODEL_TAG": "refuses_nan:latest"}) as srv:
        refused = post(srv, "/predict_batch", {"instances": [X[0].tolist(), [1.0, None, 2.0]]})
        assert refused.status_code == 400 and refused.json()["reason"] == "missing_value"
        assert "instance 1: feature 'x1' may not be missing" in refused.json()["error"]
        payloads = [[1.0, None, 2.0] if i % 4 == 0 else X[i].tolist() for i in range(80)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda row: post(srv, "/predict", {"features": row}), payloads))
        for row, answer in zip(payloads, answers):
            if None in row:
                assert answer.status_code == 400
            else:
                assert answer.status_code == 200 and answer.json()["prediction"] == bool(model.predict([row])[0])
