"""Our Prometheus metrics count exactly what was served, also across several workers."""

from __future__ import annotations

import json

import numpy as np
import requests

from harness.load import run_load
from harness.prometheus_text import delta, scrape, total
from harness.serving import Server, write_config


def test_rows_outcomes_reasons_classes_and_drift_are_counted(server, post, trained, cancer):
    X = cancer["X"]
    before = scrape(server.url)
    for row in X[:5]:
        assert post("/predict", {"features": row.tolist()}).ok
    assert post("/predict_batch", {"instances": X[5:12].tolist()}).ok
    assert post("/predict", {"features": X[0, :29].tolist()}).status_code == 400
    assert post("/predict", {"features": X[0, :28].tolist()}).status_code == 400
    assert post("/predict_batch", {"instances": [X[0].tolist(), X[1].tolist(), [1.0]]}).status_code == 400
    drifting = X[20].copy()
    drifting[0] = 1e6  # far above the training range of "mean radius"
    assert post("/predict", {"features": drifting.tolist()}).ok
    after = scrape(server.url)

    tag = trained["tag"]
    assert delta(before, after, "ml_predictions_total", endpoint="/predict", outcome="success", model_tag=tag) == 6
    assert delta(before, after, "ml_predictions_total", endpoint="/predict_batch", outcome="success") == 7
    assert delta(before, after, "ml_predictions_total", endpoint="/predict", outcome="rejected") == 2
    assert delta(before, after, "ml_predictions_total", endpoint="/predict_batch", outcome="rejected") == 3
    assert delta(before, after, "ml_rejected_requests_total", endpoint="/predict", reason="wrong_length") == 2
    assert delta(before, after, "ml_rejected_requests_total", endpoint="/predict_batch", reason="wrong_length") == 1
    assert delta(before, after, "ml_prediction_latency_seconds_count", endpoint="/predict") == 6
    assert delta(before, after, "ml_feature_out_of_range_total", feature="mean radius") == 1
    assert delta(before, after, "ml_feature_out_of_range_total") == 1

    predicted = trained["pipeline"].predict(np.vstack([X[:12], drifting]))
    for index, name in enumerate(["0", "1"]):
        counted = delta(before, after, "ml_predicted_class_total", class_name=name)
        assert counted == int((predicted == index).sum())
    assert total(after, "ml_model_info", model_tag=tag, task="classification") == 1


def test_latency_buckets_resolve_below_a_millisecond(server, post, cancer):
    assert post("/predict", {"features": cancer["X"][0].tolist()}).ok
    buckets = {dict(labels)["le"] for (name, labels), _ in scrape(server.url).items()
               if name == "ml_prediction_latency_seconds_bucket"}
    assert {"0.0005", "0.001", "10.0"} <= buckets


def test_two_workers_per_service_add_up_and_log_payloads(tmp_path, bentoml_home, trained, cancer):
    logs = tmp_path / "payload"

    def change(settings):
        settings["services"]["SklearnService"]["workers"] = 2
        settings["services"]["ModelRunner"]["workers"] = 2
        settings["services"]["SklearnService"]["monitoring"] = {
            "enabled": True, "type": "default", "options": {"log_path": str(logs)}}

    path = write_config(tmp_path, change)

    X = cancer["X"]
    expected = trained["pipeline"].predict(X).astype(float)
    requests = [("/predict", {"features": X[i % len(X)].tolist()}) for i in range(300)]
    requests += [("/predict_batch", {"instances": X[:10].tolist()})] * 10
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(path)}) as server:
        # a connection per request: kept-alive connections may all land on one worker
        results = run_load(server.url, requests, clients=32, new_connections=True)
        after = scrape(server.url)

    assert [r.status for r in results] == [200] * 310
    assert all(r.body == {"prediction": expected[i % len(X)]} for i, r in enumerate(results[:300]))
    assert total(after, "ml_predictions_total", outcome="success") == 400
    assert total(after, "bentoml_service_request_total", endpoint="/predict", service_name="SklearnService",
                 http_response_code="200") == 300
    assert total(after, "ml_runner_call_rows_sum") == 400
    # BentoML's batch size counts runner calls merged into one model call: every call was batched
    assert total(after, "bentoml_service_adaptive_batch_size_sum", method_name="predict") == \
        total(after, "ml_runner_call_rows_count")

    lines = [json.loads(line) for f in sorted(logs.glob("predictions/data/*.log")) for line in f.read_text().splitlines()]
    assert len(lines) == 400
    assert len(list(logs.glob("predictions/data/*.log"))) == 2  # one file per API worker
    first = next(line for line in lines if line["endpoint"] == "/predict_batch")
    assert first["mean radius"] == X[0, 0] and first["prediction"] == expected[0]


def test_a_second_server_on_the_same_store_leaves_our_metrics_alone(server, post, bentoml_home, cancer):
    row = {"features": cancer["X"][0].tolist()}
    assert post("/predict", row).ok
    before = total(scrape(server.url), "ml_predictions_total", outcome="success")
    with Server(bentoml_home) as other:
        assert requests.post(other.url + "/predict", json=row, timeout=10).ok
        assert total(scrape(other.url), "ml_predictions_total", outcome="success") == 1
    assert total(scrape(server.url), "ml_predictions_total", outcome="success") == before
    assert post("/predict", row).ok
    assert total(scrape(server.url), "ml_predictions_total", outcome="success") == before + 1


def test_every_reason_a_request_is_refused_with_has_its_series():
    """REJECT_REASONS (the series created at start-up) holds every reason the code refuses a request with:
    each RequestError reason raised anywhere, but those never counted as a refusal."""
    import re

    from sklearn_service.metrics import REJECT_REASONS
    from harness.serving import ROOT

    not_refusals = {"unknown_model", "not_ready",  # V2 routes that predict nothing
                    "unknown_route", "unknown_version", "load_failed", "default_model", "model_failed_check",  # repository
                    "overloaded", "runner_unavailable", "runner_error"}  # runner trouble: outcome "error"
    source = "".join(path.read_text() for path in [ROOT / "service.py", *(ROOT / "sklearn_service").glob("*.py")])
    raised = set(re.findall(r'RequestError\(\s*"(\w+)"', source))
    assert len(set(REJECT_REASONS)) == len(REJECT_REASONS)
    assert raised - not_refusals == set(REJECT_REASONS)
