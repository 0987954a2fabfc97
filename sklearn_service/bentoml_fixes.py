"""Fixes for the pinned BentoML (1.4.30), applied when service.py is imported."""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import tempfile

import bentoml.serving

from _bentoml_sdk.io_models import IOMixin
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse


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


def apply() -> None:
    bentoml.serving.ensure_prometheus_dir = _own_prometheus_dir
    TimeoutMiddleware.__call__ = _timeout_call
    # mime_type() of a root-model output (the runner's arrays) builds a pydantic
    # TypeAdapter and a whole JSON schema on every response; it depends only on
    # the class, so compute it once per class (~12% of the runner's CPU).
    if not hasattr(IOMixin.mime_type, "cache_info"):
        IOMixin.mime_type = classmethod(functools.lru_cache(maxsize=None)(IOMixin.mime_type.__func__))
