"""Fixes for the pinned BentoML (1.4.30), applied when service.py is imported."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import random
import shutil
import tempfile

import bentoml.serving
from circus.arbiter import Arbiter
from tornado import gen

from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.io_models import IOMixin
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.context import trace_context
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from sklearn_service.errors import RETRY_AFTER_SECONDS


async def _timeout_call(self: TimeoutMiddleware, scope, receive, send) -> None:
    """TimeoutMiddleware.__call__ with its timer cancelled once the request ends.

    The original schedules `call_later(traffic.timeout, ...)` per request and
    never cancels it, so each request's future and context (with its tracing
    span) stays alive for the whole timeout: ~400k live objects at 1,000 req/s
    and 10 s, and every full garbage collection over them stalled the event
    loop for 100-300 ms. Behaviour is otherwise the same: 504 after the timeout.
    """
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    task = asyncio.ensure_future(self.app(scope, receive, _send))
    task.add_done_callback(lambda _: timer.cancel())
    try:
        await waiter
    except asyncio.TimeoutError:
        if task.cancel():
            message = f"Not able to process the request in {self.timeout} seconds"
            await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
    else:
        await task
    finally:
        timer.cancel()


def _own_prometheus_dir(*args, **kwargs) -> str:
    """A metrics directory of this server's own, removed when it exits.

    BentoML keeps multiprocess metric files in $BENTOML_HOME/prometheus_multiproc_dir
    and empties it whenever a server starts, so a second server on the same home
    wiped the first one's counters and then mixed its own into them.
    """
    path = tempfile.mkdtemp(prefix="bentoml-prometheus-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


_max_concurrency_call = MaxConcurrencyMiddleware.__call__


async def _max_concurrency_call_with_retry_after(self, scope, receive, send) -> None:
    """MaxConcurrencyMiddleware answers 429 without Retry-After; clients need it to back off."""

    async def send_with_retry_after(message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (429, 503):
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"retry-after" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"retry-after", RETRY_AFTER_SECONDS.encode())]}
        await send(message)

    await _max_concurrency_call(self, scope, receive, send_with_retry_after)


class ClientErrorsAsWarnings(logging.Filter):
    """BentoML logs every request a client got wrong (bad JSON, wrong types) at ERROR with a
    full traceback: a hostile client could flood the log. Those become one-line warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        client_error = isinstance(exc, ValidationError) or 400 <= int(getattr(exc, "error_code", 0) or 0) < 500
        if client_error:
            summary = str(exc).splitlines()[0]
            record.msg, record.args = f"{record.getMessage()}: client error: {summary}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


ENTRY_WATCHER = "service"  # BentoML's name for the entry service's workers; dependencies are service_<Name>


@gen.coroutine
def _stop_entry_service_first(self, close_output_streams=False, watcher_iter_func=None):
    """On SIGTERM circus stopped every service at once: the runner exited in milliseconds
    while the API service was still answering requests that need it (they got 503).
    The entry service now drains first; its dependencies stop after it has exited."""
    watchers = (watcher_iter_func or self.iter_watchers)(reverse=False)
    for stage in ([w for w in watchers if w.name == ENTRY_WATCHER], [w for w in watchers if w.name != ENTRY_WATCHER]):
        yield gen.multi([w._stop(close_output_streams) for w in stage])


class RequestId:
    """Gives each request the id BentoML otherwise takes from its tracing span
    (X-BentoML-Request-ID, request ids in logs and payload logs)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            trace_context.request_id = random.getrandbits(64)
        await self.app(scope, receive, send)


_service_middlewares = ServiceAppFactory.middlewares.fget


def _tracing_only_with_an_exporter(self) -> list:
    """BentoML wraps every request in an OpenTelemetry span even when no tracing exporter is
    configured: nothing is exported, yet it cost ~0.3 ms per request on each of the two hops
    (c=1 p50 2.0 -> 1.4 ms, c=64 +60 % requests/s without it). With `tracing.exporter_type`
    set in configuration.yaml the span middleware stays."""
    middlewares = _service_middlewares(self)
    if BentoMLContainer.config.tracing.exporter_type.get():
        return middlewares
    return [Middleware(RequestId) if getattr(m.cls, "__name__", "") == "OpenTelemetryMiddleware" else m
            for m in middlewares]


def apply() -> None:
    ServiceAppFactory.middlewares = property(_tracing_only_with_an_exporter)
    Arbiter._stop_watchers = _stop_entry_service_first
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsAsWarnings())
    bentoml.serving.ensure_prometheus_dir = _own_prometheus_dir
    TimeoutMiddleware.__call__ = _timeout_call
    MaxConcurrencyMiddleware.__call__ = _max_concurrency_call_with_retry_after
    # mime_type() of a root-model output (the runner's arrays) builds a pydantic
    # TypeAdapter and a whole JSON schema on every response; it depends only on
    # the class, so compute it once per class (~12% of the runner's CPU).
    if not hasattr(IOMixin.mime_type, "cache_info"):
        IOMixin.mime_type = classmethod(functools.lru_cache(maxsize=None)(IOMixin.mime_type.__func__))
