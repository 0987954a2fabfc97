"""Overload, a killed runner, SIGTERM under load and the API key, against real `bentoml serve` processes.

Every load here is bounded in requests and time and targets loopback only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil
import pytest
import requests

from tests.load import run_load
from tests.serving import ROOT, Server, write_config

REFUSALS = (429, 503)


def single_rows(cancer, count: int):
    return [("/predict", {"features": cancer["X"][i % len(cancer["X"])].tolist()}) for i in range(count)]


def assert_refusals_are_fast_and_say_when_to_retry(results, fast: float, typical: float = 0.25):
    """Times are measured by a Python client sharing 2 cores with the server: bound every
    refusal well under the 10 s timeout, and the median one tightly."""
    refusals = sorted(r.seconds for r in results if r.status in REFUSALS)
    for r in results:
        if r.status in REFUSALS:
            assert r.headers.get("Retry-After") == "1", r
            assert r.seconds < fast, r
    assert not refusals or refusals[len(refusals) // 2] < typical, refusals[len(refusals) // 2]


def assert_healthy(url: str, expected: float, row) -> None:
    assert requests.get(url + "/readyz", timeout=5).status_code == 200
    assert requests.post(url + "/predict", json={"features": row}, timeout=5).json() == {"prediction": expected}


def test_four_times_capacity_gets_answers_or_fast_refusals(server, trained, cancer):
    expected = trained["pipeline"].predict(cancer["X"]).astype(float)
    results = run_load(server.url, single_rows(cancer, 6000), clients=256, timeout=15)
    statuses = Counter(r.status for r in results)
    assert set(statuses) <= {200, *REFUSALS}, statuses
    assert all(r.body == {"prediction": expected[r.index % len(expected)]} for r in results if r.status == 200)
    assert_refusals_are_fast_and_say_when_to_retry(results, fast=2.0)
    assert max(r.seconds for r in results) < 10  # the configured traffic timeout
    assert_healthy(server.url, expected[0], cancer["X"][0].tolist())


def test_tight_limits_refuse_quickly_with_retry_after(tmp_path, bentoml_home, trained, cancer):
    def tight(settings):
        settings["services"]["SklearnService"]["traffic"]["max_concurrency"] = 8
        settings["app"]["max_queued_rows"] = 4

    expected = trained["pipeline"].predict(cancer["X"]).astype(float)
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(write_config(tmp_path, tight))}) as srv:
        results = run_load(srv.url, single_rows(cancer, 2000), clients=128, timeout=15)
        statuses = Counter(r.status for r in results)
        assert set(statuses) <= {200, *REFUSALS} and statuses[200] > 0, statuses
        assert statuses[429] + statuses[503] > 0, statuses
        assert_refusals_are_fast_and_say_when_to_retry(results, fast=2.0)
        assert all(r.body == {"prediction": expected[r.index % len(expected)]} for r in results if r.status == 200)
        assert_healthy(srv.url, expected[0], cancer["X"][0].tolist())


def runner_pid(server: Server) -> int:
    (runner,) = [p for p in psutil.Process(server.process.pid).children(recursive=True)
                 if "ModelRunner" in " ".join(p.cmdline())]
    return runner.pid


class BackgroundLoad(threading.Thread):
    """Rounds of bounded load until stopped (or 60 s at most)."""

    def __init__(self, url: str, requests_per_round, clients: int, **kwargs):
        super().__init__(daemon=True)
        self.url, self.requests, self.clients, self.kwargs = url, requests_per_round, clients, kwargs
        self.results, self.stop = [], threading.Event()

    def run(self):
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.results += run_load(self.url, self.requests, clients=self.clients, timeout=15, **self.kwargs)


def test_killed_runner_gives_fast_503s_then_recovers(bentoml_home, trained, cancer):
    expected = trained["pipeline"].predict(cancer["X"]).astype(float)
    with Server(bentoml_home) as srv:
        before = runner_pid(srv)
        load = BackgroundLoad(srv.url, single_rows(cancer, 64), clients=8)
        load.start()
        time.sleep(1.5)
        os.kill(before, signal.SIGKILL)
        killed_at = time.monotonic()
        recovered_at = None
        while recovered_at is None and time.monotonic() - killed_at < 20:
            try:
                answer = requests.post(srv.url + "/predict", json={"features": cancer["X"][0].tolist()}, timeout=3)
                if answer.status_code == 200 and requests.get(srv.url + "/readyz", timeout=3).status_code == 200:
                    recovered_at = time.monotonic()
            except requests.RequestException:
                pass
            time.sleep(0.2)
        time.sleep(1)
        load.stop.set()
        load.join(30)
        assert recovered_at is not None and recovered_at - killed_at < 10
        assert runner_pid(srv) != before
        assert_healthy(srv.url, expected[0], cancer["X"][0].tolist())

    statuses = Counter(r.status for r in load.results)
    assert set(statuses) <= {200, 503} and statuses[503] > 0, statuses
    # at most the 1 s stall watchdog, plus client-side delay
    assert_refusals_are_fast_and_say_when_to_retry(load.results, fast=2.5, typical=1.2)
    assert all(r.body == {"prediction": expected[r.index % len(expected)]} for r in load.results if r.status == 200)


def test_sigterm_drains_accepted_requests_and_exits(bentoml_home, trained, cancer):
    batch = [("/predict_batch", {"instances": cancer["X"][:500].tolist()})] * 400
    expected = trained["pipeline"].predict(cancer["X"][:500]).astype(float).tolist()
    with Server(bentoml_home) as srv:
        load = BackgroundLoad(srv.url, batch, clients=8, new_connections=True)
        load.start()
        time.sleep(1.5)
        srv.process.send_signal(signal.SIGTERM)  # to the server process only, as an orchestrator does
        term_at = time.monotonic()
        srv.process.wait(30)
        exited_after = time.monotonic() - term_at
        load.stop.set()
        load.join(60)
    assert srv.process.returncode == 0 and exited_after < 15
    # sent well before the signal: accepted and being worked on (bodies upload in milliseconds);
    # connections still uploading at the signal were never accepted and are closed
    before_term = [r for r in load.results if r.started < term_at - 0.2]
    assert before_term and all(r.status == 200 and r.body["predictions"] == expected for r in before_term), \
        Counter((r.status, r.error) for r in before_term)
    assert any(r.status == 200 and r.started + r.seconds > term_at for r in load.results)  # drained after SIGTERM
    answered = [r for r in load.results if r.status]
    assert all(r.status == 200 for r in answered)  # no 5xx, nothing cut into an error
    assert not [r for r in load.results if r.error in ("ClientPayloadError", "ContentTypeError", "ValueError")]


@pytest.fixture(scope="module")
def keyed_server(bentoml_home, trained):
    with Server(bentoml_home, env={"API_KEY": "s3cret-key"}) as srv:
        yield srv


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "s3cret-key"}, 401),
    ({"Authorization": "Bearer s3cret-key"}, 200)])
def test_api_key_guards_inference_and_metadata(keyed_server, cancer, headers, status):
    predict = requests.post(keyed_server.url + "/predict", json={"features": cancer["X"][0].tolist()},
                            headers=headers, timeout=5)
    metadata = requests.get(keyed_server.url + "/metadata", headers=headers, timeout=5)
    assert predict.status_code == status and metadata.status_code == status
    if status == 401:
        assert predict.json()["reason"] == "unauthorized" and "Bearer" in predict.headers["WWW-Authenticate"]


def test_health_and_metrics_stay_open_with_a_key(keyed_server):
    for path in ("/livez", "/readyz", "/metrics"):
        assert requests.get(keyed_server.url + path, timeout=5).status_code == 200, path


def test_short_soak_has_no_errors_and_no_memory_growth():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "10"],
                            capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "non-2xx/errors 0" in result.stdout


def test_example_client_sends_the_api_key(keyed_server):
    result = subprocess.run([sys.executable, str(ROOT / "client.py"), "--url", keyed_server.url,
                             "--api-key", "s3cret-key"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "predict: {'prediction'" in result.stdout, result.stderr[-2000:]
