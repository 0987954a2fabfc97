"""The shipped monitoring files: valid, unit-tested rules, queries that match real metrics, a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
import requests
import yaml

from harness.prometheus_server import MONITORING, needs_prometheus, prometheus, prometheus_query
from harness.prometheus_text import scrape, total
from harness.serving import Server

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make system-deps)")
SUFFIXES = re.compile(r"_(bucket|sum|count)$")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_rules_and_config_are_valid_and_the_rule_unit_tests_pass():
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml"),
                 ("test", "rules", "alerts_test.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml").stdout


def queried_metrics() -> dict[str, set[str]]:
    """Metric names each monitoring file queries (our ml_* and BentoML's bentoml_*)."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = {"dashboard": [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])],
             "alerts": [r["expr"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
                        for r in g["rules"]]}
    return {source: {SUFFIXES.sub("", name) for e in found for name in re.findall(r"\b((?:ml|bentoml)_\w+)", e)}
            for source, found in exprs.items()}


def exported(url: str) -> set[str]:
    return {SUFFIXES.sub("", name) for name, _ in scrape(url)}


def test_dashboard_and_alerts_only_query_metrics_the_service_exports(server, regressor_server, post, cancer):
    assert post("/predict", {"features": cancer["X"][0].tolist()}).ok
    assert post("/predict", {"features": [1e9] * 30}).ok  # out of range: the drift counter appears
    assert post("/predict", {"features": [1.0]}).status_code == 400  # and the rejection counter
    requests.post(regressor_server.url + "/predict", json={"features": regressor_server.features[0].tolist()}, timeout=10)
    available = exported(server.url) | exported(regressor_server.url)
    for source, names in queried_metrics().items():
        assert names, source
        assert names <= available, f"{source} queries metrics nobody exports: {sorted(names - available)}"


def test_regressor_predicts_values_and_refuses_probabilities(regressor_server):
    rows = regressor_server.features[:3]
    before = total(scrape(regressor_server.url), "ml_predicted_value_count")
    answer = requests.post(regressor_server.url + "/predict_batch", json={"instances": rows.tolist()}, timeout=10)
    assert answer.json()["predictions"] == pytest.approx(regressor_server.pipeline.predict(rows).tolist())
    refused = requests.post(regressor_server.url + "/predict_proba", json={"features": rows[0].tolist()}, timeout=10)
    assert refused.status_code == 400 and refused.json()["reason"] == "not_a_classifier"
    assert total(scrape(regressor_server.url), "ml_predicted_value_count") == before + 3


def wait_for_value(url: str, query: str, expected: float, timeout: float = 60) -> float | None:
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline and value != expected:
        try:
            result = prometheus_query(url, query)
            value = float(result[0]["value"][1]) if result else None
        except requests.RequestException:  # still starting
            pass
        time.sleep(0.3)
    return value


@needs_prometheus
def test_a_real_prometheus_scrapes_what_was_sent(tmp_path, server, cancer):
    sent = 150
    earlier = total(scrape(server.url), "ml_predictions_total", endpoint="/predict", outcome="success")
    with prometheus(tmp_path, server) as url:
        query = 'sum(ml_predictions_total{job="sklearn-service", endpoint="/predict", outcome="success"})'
        # one request first, so Prometheus holds a sample from before the rest arrive: rate() needs both
        for batch in (range(1), range(1, sent)):
            for i in batch:
                assert requests.post(server.url + "/predict", json={"features": cancer["X"][i].tolist()},
                                     timeout=10).ok
            assert wait_for_value(url, query, earlier + batch.stop) == earlier + batch.stop, \
                (tmp_path / "prometheus.log").read_text()[-2000:]
        time.sleep(2.5)  # a few more scrapes so rate() has samples to work with
        p99 = prometheus_query(url, 'histogram_quantile(0.99, sum by (le) '
                                    '(rate(ml_prediction_latency_seconds_bucket{endpoint="/predict"}[1m])))')
        assert 0 < float(p99[0]["value"][1]) < 1.0
        assert prometheus_query(url, 'up{job="sklearn-service"}')[0]["value"][1] == "1"
        rules = requests.get(url + "/api/v1/rules", timeout=5).json()["data"]["groups"][0]["rules"]
        assert {r["name"] for r in rules} >= {"SklearnServiceDown", "SklearnServiceFeatureDrift",
                                              "SklearnServiceDataDrift", "SklearnServicePredictionDrift"}


SELECTOR = re.compile(r"\b((?:ml|bentoml)_\w+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# BentoML's runner-side batch histogram: the runner process creates it on its first batch
FIRST_REQUEST = {"bentoml_service_adaptive_batch_size_sum", "bentoml_service_adaptive_batch_size_count"}


def queried_series() -> set[tuple[str, tuple]]:
    """(sample name, label matchers) of every series selector in the alert rules and the dashboard; matchers
    on Grafana variables ($job) are left out."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [r["expr"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    return {(name, tuple(m for m in MATCHER.findall(matchers or "") if "$" not in m[2]))
            for expr in exprs for name, matchers in SELECTOR.findall(expr)}


def selected(samples: dict, name: str, matchers=(), **labels) -> list[float]:
    """Values of the samples `name{matchers}` selects (PromQL's =, !=, =~, !~; a missing label is "")."""
    def matches(labels: dict, label: str, op: str, value: str) -> bool:
        found = labels.get(label, "")
        return {"=": found == value, "!=": found != value, "=~": bool(re.fullmatch(value, found)),
                "!~": not re.fullmatch(value, found)}[op]

    matchers = [*matchers, *((label, "=", value) for label, value in labels.items())]
    return [v for (n, ls), v in samples.items() if n == name and all(matches(dict(ls), *m) for m in matchers)]


def test_every_series_the_alerts_and_dashboard_select_exists_from_start_up(bentoml_home, trained, regressor_server):
    """A fresh service, before any request, exports every series the monitoring files select, and for every
    endpoint, outcome and refusal reason; the first requests land in those same series."""
    from sklearn_service import open_inference
    from sklearn_service.metrics import ENDPOINTS, OUTCOMES, REJECT_REASONS

    servers = [Server(bentoml_home), Server(bentoml_home, env={"MODEL_TAG": "diabetes_model:latest"})]
    try:
        before = [scrape(server.wait_ready().url) for server in servers]  # classifier, regressor
        classifier = servers[0]
        for path, payload in (("/predict", {"features": [1.0] * 30}), ("/predict_batch", {"instances": [[1.0] * 30]})):
            assert requests.post(classifier.url + path, json=payload, timeout=10).ok
        after = scrape(classifier.url)
    finally:
        for server in servers:
            server.stop()

    queried = queried_series()
    assert {name for name, _ in queried} >= {"ml_predictions_total", "ml_prediction_latency_seconds_bucket",
                                              "bentoml_service_request_total"}
    missing = [(name, matchers) for name, matchers in sorted(queried) if name not in FIRST_REQUEST
               and not any(selected(samples, name, matchers) for samples in before)]
    assert missing == [], f"not exported before the first request: {missing}"
    for samples in before:
        for endpoint in ENDPOINTS:
            assert selected(samples, "ml_prediction_latency_seconds_count", endpoint=endpoint) == [0]
            for outcome in OUTCOMES:
                assert selected(samples, "ml_predictions_total", endpoint=endpoint, outcome=outcome) == [0]
            for reason in REJECT_REASONS:
                assert selected(samples, "ml_rejected_requests_total", endpoint=endpoint, reason=reason) == [0]
    # ENDPOINTS covers every API route (BentoML's own counter names them) and the V2 endpoint
    routes = {dict(ls)["endpoint"] for (name, ls), _ in before[0].items() if name == "bentoml_service_request_total"
              and ("http_response_code", "500") in ls and ("runner_name", "SklearnService") in ls}
    assert routes and routes | {open_inference.ENDPOINT} <= set(ENDPOINTS)

    for name, matchers in queried:
        if name in FIRST_REQUEST:
            assert selected(after, name, matchers), name
    assert selected(after, "ml_predictions_total", endpoint="/predict", outcome="success") == [1]
    assert selected(after, "bentoml_service_request_duration_seconds_count", endpoint="/predict",
                    runner_name="SklearnService", http_response_code="200") == [1]  # the one series made at 0
