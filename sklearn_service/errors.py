"""Error responses: client mistakes as 4xx naming the problem, runner trouble as a fast 503."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from starlette.responses import JSONResponse

from sklearn_service.log_limit import limited

RETRY_AFTER_SECONDS = "1"


class RequestError(Exception):
    """A request that gets no prediction: a client mistake (4xx) or runner trouble (5xx).
    `reason` is a short metric label, the message is for the client."""

    def __init__(self, reason: str, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.headers = headers


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "reason": exc.reason}, status_code=exc.status, headers=exc.headers)


class Overloaded(Exception):
    """More rows are waiting for the runner than configured (app.max_queued_rows)."""


class RunnerStalled(Exception):
    """A runner call went unanswered for app.runner_stall_seconds: the runner is down or restarting."""


# The runner went away or broke off its answer: the connection failed or closed
# (ClientConnectionError: refused, reset, disconnected, timed out), the response body was
# cut short (ClientPayloadError: killed mid-response), the request body could not be sent
# (UploadAbortedError), or the response head was malformed (ClientResponseError, which
# aiohttp raises itself only for that; BentoML turns error statuses into its own exceptions).
# Not here: InvalidURL and the redirect errors, which are configuration bugs.
RUNNER_GONE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.UploadAbortedError,
               aiohttp.ClientResponseError, ConnectionError, asyncio.TimeoutError)


def runner_unavailable(exc: Exception) -> bool:
    """Overloaded, restarting or unreachable: worth retrying shortly."""
    if isinstance(exc, (Overloaded, RunnerStalled, *RUNNER_GONE)):
        return True
    return getattr(exc, "error_code", None) in (429, 503, 504)


def _retry_shortly(error: str, reason: str) -> RequestError:
    return RequestError(reason, error, 503, {"Retry-After": RETRY_AFTER_SECONDS})


def runner_failure(exc: Exception, logger: logging.Logger) -> RequestError:
    """The answer for a failed runner call. A dead runner fails every request at once, so the
    log says so once per interval, with a count (log_limit)."""
    if isinstance(exc, Overloaded):
        return _retry_shortly("the service is overloaded, retry shortly", "overloaded")
    if runner_unavailable(exc):
        limited(logger).warning(f"runner_unavailable:{type(exc).__name__}", "model runner unavailable: %r", exc)
        return _retry_shortly("the model is temporarily unavailable, retry shortly", "runner_unavailable")
    limited(logger).error(f"runner_failed:{type(exc).__name__}", "model runner failed: %r", exc, exc_info=exc)
    return RequestError("runner_error", "the model failed to answer; see the server log", 500)
