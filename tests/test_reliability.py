"""Overload, a killed runner and the API key, against real `bentoml serve` processes (SIGTERM: test_drain.py).

Every load here is bounded in requests and time and targets loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil
import pytest
import requests

from harness.load import run_load
from harness.serving import ROOT, Server, write_config

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


@pytest.mark.soak
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


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "s3cret-key"}, 401),
    ({"Authorization": "Bearer s3cret-key"}, 200), ({"Authorization": "bearer s3cret-key"}, 200),
    ({"Authorization": "BEARER  s3cret-key"}, 200), ({"Authorization": "Basic s3cret-key"}, 401)])
def test_api_key_guards_inference_and_metadata(keyed_server, cancer, headers, status):
    predict = requests.post(keyed_server.url + "/predict", json={"features": cancer["X"][0].tolist()},
                            headers=headers, timeout=5)
    metadata = requests.get(keyed_server.url + "/metadata", headers=headers, timeout=5)
    assert predict.status_code == status and metadata.status_code == status
    if status == 401:
        assert predict.json()["reason"] == "unauthorized" and "Bearer" in predict.headers["WWW-Authenticate"]


def test_api_key_is_checked_before_the_body_is_read(keyed_server):
    """A wrong key with a large declared body that never comes: refused at once, nothing buffered."""
    with connect(keyed_server.url) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer wrong\r\nContent-Length: 8000000\r\n\r\n")
        sock.settimeout(3)
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")


def test_health_and_metrics_stay_open_with_a_key(keyed_server):
    for path in ("/livez", "/readyz", "/metrics"):
        assert requests.get(keyed_server.url + path, timeout=5).status_code == 200, path


@pytest.mark.soak
def test_soak_at_64_connections_has_no_errors_and_no_memory_growth():
    """150 s of mixed endpoints at 64 connections: no error, no disconnect, through as many runner
    calls as would have made BentoML's default (a session renewal every 100 calls) renew its session
    many times over (see test_patches.py for what a renewal does to calls in flight)."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "150", "--connections", "64"],
                            capture_output=True, text=True, timeout=400, cwd=ROOT)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "non-2xx/errors 0," in result.stdout and "disconnects logged 0" in result.stdout
    renewals = int(result.stdout.split("would have renewed the session ")[1].split()[0])
    assert renewals >= 10, result.stdout


def test_example_client_sends_the_api_key(keyed_server):
    result = subprocess.run([sys.executable, str(ROOT / "client.py"), "--url", keyed_server.url,
                             "--api-key", "s3cret-key"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "predict: {'prediction'" in result.stdout, result.stderr[-2000:]


# --- slow clients: headers, then body, each within app.client_timeout_seconds ------------------

CLIENT_TIMEOUT = 2.0


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


@pytest.fixture(scope="module")
def slow_client_server(tmp_path_factory, bentoml_home, trained):
    def limits(settings):
        settings["app"]["client_timeout_seconds"] = CLIENT_TIMEOUT
        settings["services"]["SklearnService"]["traffic"]["max_concurrency"] = 8

    path = write_config(tmp_path_factory.mktemp("slow-clients"), limits)
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(path)}) as srv:
        yield srv


class SlowClient(threading.Thread):
    """One connection that sends `head`, then trickles `drip` every 0.3 s; records when and how
    the server ended it."""

    def __init__(self, url: str, head: bytes, drip: bytes):
        super().__init__(daemon=True)
        self.url, self.head, self.drip = url, head, drip
        self.answer, self.closed_after = b"", None

    def run(self):
        start = time.monotonic()
        with connect(self.url) as sock:
            sock.sendall(self.head)
            sock.settimeout(0.3)
            while time.monotonic() - start < 4 * CLIENT_TIMEOUT + 5:
                try:
                    if self.drip:
                        sock.sendall(self.drip)
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    chunk = b""
                self.answer += chunk
                if not chunk:
                    self.closed_after = time.monotonic() - start
                    return


SLOW = {
    "idle connection": (b"", b""),
    "headers trickled": (b"POST /predict HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n"),
    "body trickled": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n", b" "),
    "declared body never sent": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100\r\n\r\n{\"features\"", b""),
}


def test_slow_clients_are_cut_off_while_valid_requests_succeed(slow_client_server, trained, cancer):
    """60 slow connections (more than max_concurrency 8) of each kind, valid load alongside: every slow
    one is closed within the bound (408 where its request has begun), and no valid request is refused,
    so they held no concurrency slot while they waited."""
    expected = trained["pipeline"].predict(cancer["X"]).astype(float)
    slow = [SlowClient(slow_client_server.url, *SLOW[kind]) for kind in SLOW for _ in range(15)]
    for client in slow:
        client.start()
    time.sleep(0.5)
    results = run_load(slow_client_server.url, single_rows(cancer, 600), clients=4, timeout=15)
    for client in slow:
        client.join(4 * CLIENT_TIMEOUT + 10)
    assert Counter(r.status for r in results) == {200: 600}
    assert all(r.body == {"prediction": expected[r.index % len(expected)]} for r in results)
    bound = CLIENT_TIMEOUT + 3  # the limit, plus scheduling on a busy 2-core machine
    for kind, client in zip([k for k in SLOW for _ in range(15)], slow):
        assert client.closed_after is not None and client.closed_after < bound, (kind, client.closed_after)
        if kind != "idle connection":
            assert client.answer.startswith(b"HTTP/1.1 408"), (kind, client.answer[:200])
            assert b'"reason":"request_timeout"' in client.answer.replace(b" ", b""), client.answer
    assert_healthy(slow_client_server.url, expected[0], cancer["X"][0].tolist())
