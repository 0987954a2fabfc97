"""Live drift through a real `bentoml serve` of a mixed-type model: the PSI gauges from start-up, under
traffic like training and under shifted traffic, a real Prometheus firing the alert, and 2 API workers."""

from __future__ import annotations

import time

import bentoml
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

import train as train_cli
from sklearn_service.drift import Bins
from sklearn_service.drift_report import PREDICTION, encode, read_log
from sklearn_service.model_store import stored_signature
from tests.load import run_load
from tests.mixed_data import FEATURES, json_rows, penguins, write_penguins_csv
from tests.prometheus_text import scrape, total
from tests.serving import Server, write_config
from tests.test_monitoring import MONITORING, needs_prometheus, prometheus, prometheus_query

THRESHOLD = 0.2


def shifted(rows: int, seed: int) -> pd.DataFrame:
    """Bill length 8 mm longer, and 70% of the birds on Torgersen (20% in training); the rest as trained."""
    frame = penguins(rows, seed)
    frame["bill_length_mm"] += 8
    frame["island"] = np.where(np.arange(rows) % 10 < 7, "Torgersen", frame["island"])
    return frame


def drift_settings(window_rows: int, min_rows: int, workers: int = 1, logs=None):
    def change(settings):
        settings["app"]["drift"].update(window_rows=window_rows, window_minutes=None, min_rows=min_rows)
        settings["services"]["SklearnService"]["workers"] = workers
        if logs:
            settings["services"]["SklearnService"]["monitoring"] = {
                "enabled": True, "type": "default", "options": {"log_path": str(logs)}}
    return change


def drift_gauges(url: str) -> dict[str, float]:
    samples = scrape(url)
    found = {dict(labels)["feature"]: value for (name, labels), value in samples.items()
             if name == "ml_feature_drift_psi"}
    return {**found, PREDICTION: total(samples, "ml_prediction_drift_psi"),
            "rows": total(samples, "ml_drift_window_rows")}


def send(url: str, frame: pd.DataFrame, batch: int = 50) -> None:
    rows = json_rows(frame[FEATURES])
    for start in range(0, len(rows), batch):
        response = requests.post(url + "/predict_batch", json={"instances": rows[start:start + batch]}, timeout=10)
        assert response.status_code == 200, response.text


def wait_for(read, done, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("drift") / "penguins.csv"
    write_penguins_csv(path, rows=3000, seed=0)
    assert train_cli.main(["--data", str(path), "--target", "species", "--name", "drift_penguins"]) == 0
    return str(bentoml.models.get("drift_penguins:latest").tag)


@needs_prometheus
def test_shifted_features_cross_the_threshold_and_the_alert_fires(model, bentoml_home, tmp_path):
    config = write_config(tmp_path, drift_settings(window_rows=600, min_rows=200))
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "2s"  # shipped: 15m
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    firing = 'ALERTS{alertname="SklearnServiceDataDrift", alertstate="firing"}'

    with Server(bentoml_home, env={"MODEL_TAG": model, "SERVICE_CONFIG": str(config)}) as srv, \
            prometheus(tmp_path, srv, tmp_path / "alerts.yml") as url:
        # before any request every series the alerts and the dashboard read is there, at 0
        assert drift_gauges(srv.url) == {**{f: 0 for f in FEATURES}, PREDICTION: 0, "rows": 0}

        send(srv.url, penguins(600, seed=1))
        like_training = wait_for(lambda: drift_gauges(srv.url), lambda g: g["rows"] == 600)
        assert like_training["rows"] == 600 and max(like_training[f] for f in FEATURES) < 0.1, like_training

        send(srv.url, shifted(600, seed=2))
        drifted = wait_for(lambda: drift_gauges(srv.url), lambda g: g["bill_length_mm"] > THRESHOLD)
        assert {f for f in FEATURES if drifted[f] > THRESHOLD} == {"bill_length_mm", "island"}, drifted
        assert max(drifted[f] for f in ("flipper_length_mm", "sex", "tagged")) < 0.1, drifted
        assert drifted[PREDICTION] > THRESHOLD  # no Gentoo off Biscoe: the predicted species shift too

        alerts = wait_for(lambda: prometheus_query(url, firing), lambda found: len(found) == 2, timeout=30)
        assert sorted(a["metric"]["feature"] for a in alerts) == ["bill_length_mm", "island"], \
            (tmp_path / "prometheus.log").read_text()[-2000:]


def test_two_api_workers_publish_the_most_drifted_window_and_the_rows_of_both(model, bentoml_home, tmp_path):
    logs = tmp_path / "payload"
    config = write_config(tmp_path, drift_settings(window_rows=5000, min_rows=100, workers=2, logs=logs))
    frame = pd.concat([penguins(400, seed=3), shifted(400, seed=4)], ignore_index=True)
    rows = json_rows(frame[FEATURES])
    requests_ = [("/predict_batch", {"instances": rows[i:i + 10]}) for i in range(0, len(rows), 10)]
    with Server(bentoml_home, env={"MODEL_TAG": model, "SERVICE_CONFIG": str(config)}) as srv:
        # a connection per request: kept-alive connections may all land on one worker
        results = run_load(srv.url, requests_, clients=16, new_connections=True)
        assert [r.status for r in results] == [200] * len(requests_)
        gauges = wait_for(lambda: drift_gauges(srv.url), lambda g: g["rows"] == len(frame))

    # each worker's log holds exactly the rows of its window: recompute its PSI from there
    files = sorted(logs.glob("predictions/data/data.*.log"))
    assert len(files) == 2  # both workers served
    signature = stored_signature(bentoml.models.get(model))
    bins = Bins(signature)
    per_worker = []
    for f in files:
        worker_rows, predictions = encode(signature, read_log(f), PREDICTION)
        per_worker.append(bins.psi(bins.counts(bins.index(worker_rows, predictions)), min_rows=100))
    assert gauges["rows"] == len(frame)  # livesum: the rows of both windows
    expected = dict(zip(bins.names, np.max(per_worker, axis=0)))  # livemax: the most drifted window
    assert {k: gauges[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert {f for f in FEATURES if gauges[f] > THRESHOLD} == {"bill_length_mm", "island"}, gauges

