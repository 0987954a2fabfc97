"""Runner trouble is a 503 to retry whatever way the runner went away, and repeated failures
are logged once per interval with a count (sklearn_service/log_limit.py).

In-process: a real runner killed under load (tests/test_reliability.py) ends its calls in one of
these ways by timing; a kill landing mid-response (ClientPayloadError) could not be made
to happen on demand, so each way is checked here."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import aiohttp
import pytest
from bentoml.exceptions import BentoMLException

from sklearn_service.errors import Overloaded, RunnerStalled, runner_failure
from sklearn_service.log_limit import RateLimitedLog

REQUEST_INFO = SimpleNamespace(real_url="http://runner/predict", method="POST", url="http://runner/predict")

GONE = [
    aiohttp.ClientPayloadError("Response payload is not completed"),  # killed mid-response
    aiohttp.ClientPayloadError("Response payload is not completed: <TransferEncodingError: 400>"),
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientConnectionResetError("Connection lost"),
    aiohttp.ClientOSError(104, "Connection reset by peer"),
    aiohttp.ClientConnectorError(SimpleNamespace(ssl=None, host="127.0.0.1", port=1), OSError(111, "refused")),
    aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    aiohttp.ClientConnectionError("Connection closed"),
    aiohttp.UploadAbortedError("The request body was not fully sent"),
    aiohttp.ClientResponseError(REQUEST_INFO, (), status=400, message="Bad status line 'HTTP/1.1 2'"),
    ConnectionResetError(104, "Connection reset by peer"),
    BrokenPipeError(32, "Broken pipe"),
    TimeoutError(),
    RunnerStalled("no answer"),
    BentoMLException("restarting", error_code=503),
]
NOT_GONE = [ValueError("a bug"), aiohttp.InvalidURL("not a url"), BentoMLException("model raised", error_code=500)]


def test_aiohttp_errors_that_mean_the_runner_went_away_are_listed():
    """Every aiohttp transport error class is one of GONE's kinds (a new one in an upgrade fails here)."""
    transport = {aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.UploadAbortedError,
                 aiohttp.ClientResponseError}
    configuration = {aiohttp.InvalidURL, aiohttp.RedirectClientError, aiohttp.NonHttpUrlClientError}
    assert set(aiohttp.ClientError.__subclasses__()) <= transport | configuration


@pytest.mark.parametrize("exc", GONE, ids=lambda e: type(e).__name__)
def test_a_runner_that_went_away_is_a_503_to_retry(exc):
    problem = runner_failure(exc, logging.getLogger(f"test.gone.{id(exc)}"))
    assert (problem.status, problem.reason, problem.headers) == (503, "runner_unavailable", {"Retry-After": "1"})


@pytest.mark.parametrize("exc", NOT_GONE, ids=lambda e: type(e).__name__)
def test_other_failures_are_a_500(exc):
    assert runner_failure(exc, logging.getLogger(f"test.other.{id(exc)}")).status == 500


def test_overload_is_a_503_without_a_log_line(caplog):
    with caplog.at_level(logging.DEBUG):
        assert runner_failure(Overloaded("busy"), logging.getLogger("test.overload")).reason == "overloaded"
    assert caplog.records == []


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_repeated_failures_are_logged_once_per_interval_with_a_count(caplog):
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.limited"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        for _ in range(500):
            try:
                raise ValueError("boom")
            except ValueError as exc:
                log.error("boom", "call failed: %r", exc, exc_info=exc)
        first = [r for r in caplog.records]
        clock.now += 10
        log.error("boom", "call failed: %r", ValueError("boom"))
        log.warning("other", "another kind")
        clock.now += 10.5  # a whole interval quiet: the next one is in full again
        log.error("boom", "call failed: %r", ValueError("boom"), exc_info=ValueError("boom"))
    assert len(first) == 1 and first[0].exc_info  # the first, traceback included
    messages = [r.getMessage() for r in caplog.records]
    assert messages[1] == "call failed: ValueError('boom') (and 499 more like it in the last 10 s)"
    assert caplog.records[1].exc_info is None
    assert messages[2:] == ["another kind", "call failed: ValueError('boom')"] and caplog.records[3].exc_info


def test_a_dead_runner_logs_one_line_per_interval_not_one_per_request(caplog):
    logger = logging.getLogger("test.dead_runner")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(1000):
            runner_failure(aiohttp.ClientPayloadError("Response payload is not completed"), logger)
        for _ in range(1000):
            runner_failure(ValueError("a bug"), logger)
    assert len(caplog.records) == 2
    assert sum(len(r.getMessage()) + len(r.exc_text or "") for r in caplog.records) < 5000
