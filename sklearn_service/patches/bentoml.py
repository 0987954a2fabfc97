"""Fixes to BentoML's own code (the `bentoml` distribution: bentoml, _bentoml_sdk, _bentoml_impl):
its HTTP middleware (timeout, concurrency limit, tracing, request metrics), its error logging,
the per-request costs of its API layer, its payload log and its metrics folder. Its arbiter's stop
is in patches/kantoku.py.
A fix that also relies on another library's internals names it in `also`."""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import bentoml.serving

from _bentoml_impl.server.app import ServiceAppFactory
import _bentoml_sdk.method as bentoml_method_module
from _bentoml_sdk.io_models import IODescriptor
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.context import trace_context
from bentoml._internal.monitoring.default import DefaultMonitor
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute, compile_path

from sklearn_service import payload_log
from sklearn_service.errors import RETRY_AFTER_SECONDS
from sklearn_service.log_limit import RateLimitFilter
from sklearn_service.patches import Fix

BENTOML = ">=1.4.30,<=1.4.40"  # the BentoML releases whose source these were checked against
PYDANTIC = ">=2.11,<=2.14.4"  # model_fields_from_the_class reads pydantic's __pydantic_fields__
STARLETTE = "==1.10.0"  # metrics_by_route reads Starlette's route table and compile_path()

ORIGINAL: dict[str, Any] = {  # what each fix replaces: functions, classes, tables of methods
    "TimeoutMiddleware.__call__": TimeoutMiddleware.__call__,
    "MaxConcurrencyMiddleware.__call__": MaxConcurrencyMiddleware.__call__,
    "ensure_prometheus_dir": bentoml.serving.ensure_prometheus_dir,
    "ServiceAppFactory.middlewares": ServiceAppFactory.middlewares.fget,
    "method.inspect": bentoml_method_module.inspect,
    "RunnerTrafficMetricsMiddleware.__call__": RunnerTrafficMetricsMiddleware.__call__,
    "DefaultMonitor._init_logger": DefaultMonitor._init_logger,
}


async def _timeout_call(self: TimeoutMiddleware, scope, receive, send) -> None:
    """TimeoutMiddleware.__call__ with its timer cancelled once the request ends.

    The original schedules `call_later(traffic.timeout, ...)` per request and
    never cancels it, so each request's future and context (with its tracing
    span) stays alive for the whole timeout: ~400k live objects at 1,000 req/s
    and 10 s, and every full garbage collection over them stalled the event
    loop for 100-300 ms. Behaviour is otherwise the same: 504 after the timeout.
    An app that ends without answering (it raised, or its client left) ends the
    wait at once; with the timer gone, nothing else would, and the request's task
    would hold a draining worker forever.
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

    def finished(_) -> None:
        timer.cancel()
        if not waiter.done():
            waiter.set_result(None)

    task = asyncio.ensure_future(self.app(scope, receive, _send))
    task.add_done_callback(finished)
    try:
        await waiter
    except TimeoutError:
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
    wiped the first one's counters and then mixed its own into them. (The temporary
    directory also keeps the server off a read-only BENTOML_HOME.)
    """
    path = tempfile.mkdtemp(prefix="bentoml-prometheus-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


async def _max_concurrency_call_with_retry_after(self, scope, receive, send) -> None:
    """MaxConcurrencyMiddleware answers 429 without Retry-After; clients need it to back off."""

    async def send_with_retry_after(message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (429, 503):
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"retry-after" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"retry-after", RETRY_AFTER_SECONDS.encode())]}
        await send(message)

    await ORIGINAL["MaxConcurrencyMiddleware.__call__"](self, scope, receive, send_with_retry_after)


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
            record.rate_key = f"client_error:{type(exc).__name__}"  # for server_errors_rate_limited, after this
        return True


HTTP_APP_LOGGER = "bentoml._internal.server.http_app"  # where BentoML's log_exception() writes


class RequestId:
    """Gives each request the id BentoML otherwise takes from its tracing span
    (X-BentoML-Request-ID, request ids in logs and payload logs)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            trace_context.request_id = random.getrandbits(64)
        await self.app(scope, receive, send)


def _tracing_only_with_an_exporter(middlewares: list) -> list:
    """BentoML wraps every request in an OpenTelemetry span even when no tracing exporter is
    configured: nothing is exported, yet it cost ~0.3 ms per request on each of the two hops
    (c=1 p50 2.0 -> 1.4 ms, c=64 +60 % requests/s without it). With `tracing.exporter_type`
    set in configuration.yaml the span middleware stays. A patch because the public setting,
    `tracing.excluded_urls: ".*"`, skips the span but leaves requests without ids (BentoML takes them
    from the span), and `tracing.sample_rate` is already 0 by default."""
    if BentoMLContainer.config.tracing.exporter_type.get():
        return middlewares
    return [Middleware(RequestId) if getattr(m.cls, "__name__", "") == "OpenTelemetryMiddleware" else m
            for m in middlewares]


def _client_checks_first(factory: ServiceAppFactory, middlewares: list) -> list:
    """BentoML puts a service's own ASGI middleware (API key, body limits) inside its timeout
    and concurrency limit: a client trickling its body held one of `max_concurrency` slots,
    and one that never sent the body it declared got the timeout's 504 (a server error). Ours
    now run before those two, so a request takes a slot only once its body is in."""
    own = {cls for cls, _ in factory.service.middlewares}
    limits = [i for i, m in enumerate(middlewares) if m.cls in (TimeoutMiddleware, MaxConcurrencyMiddleware)]
    if not own or not limits:
        return middlewares
    first = min(limits)
    before = [m for m in middlewares[:first] if m.cls not in own]
    return [*before, *[m for m in middlewares if m.cls in own], *[m for m in middlewares[first:] if m.cls not in own]]


def _wrap_middlewares(change: Callable[[ServiceAppFactory, list], list]) -> None:
    previous = ServiceAppFactory.middlewares.fget
    ServiceAppFactory.middlewares = property(lambda self: change(self, previous(self)))


class _FieldsOfTheClass:
    """`model_fields` read from the class, whether asked of the class or of an instance."""

    def __get__(self, instance, owner) -> dict:
        return owner.__pydantic_fields__


def _model_fields_from_the_class() -> None:
    # BentoML reads `input_data.model_fields` on the instance for every request; pydantic >= 2.11
    # deprecates that and warns on each read: 17 % of the API worker's samples at 64 connections.
    IODescriptor.model_fields = _FieldsOfTheClass()


class _CachedSignatures:
    """The `inspect` module as _bentoml_sdk.method sees it, with `signature` remembered per function."""

    signature = staticmethod(functools.lru_cache(maxsize=None)(inspect.signature))

    def __getattr__(self, name: str):
        return getattr(inspect, name)


def _api_signature_cached() -> None:
    # Every request looks the API method up on the service instance, and APIMethod.__get__ builds
    # inspect.signature() of the function anew each time (~5 % of the API worker's CPU); the
    # function never changes, so compute it once.
    bentoml_method_module.inspect = _CachedSignatures()


# --- metrics_by_route: bounded label values for BentoML's request metrics ------------------------

OTHER_ROUTE = "other"  # the endpoint label of every request no route serves


class RouteLabels:
    """A request path -> the template of the route that serves it ("/predict",
    "/v2/models/{name}/infer", "/static_content/{path}"), or OTHER_ROUTE. The routes are the
    app's own and those of its mounted apps, plus the paths an ASGI middleware of the app
    answers or rewrites itself (its class's ROUTES)."""

    def __init__(self, app) -> None:
        self.exact: dict[str, str] = {}
        self.templates: list[tuple] = []  # (compiled path regex, template)
        self._add_routes(getattr(app, "routes", []), "")
        for middleware in getattr(app, "user_middleware", []):
            for path in getattr(middleware.cls, "ROUTES", ()):
                self._add(path)

    def _add_routes(self, routes, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                if route.routes:
                    self._add_routes(route.routes, prefix + route.path)
                else:  # an app without a route table (static files): everything under its path
                    self._add(prefix + route.path + "/{path:path}")
            elif isinstance(route, (Route, WebSocketRoute)):
                self._add(prefix + route.path)

    def _add(self, path: str) -> None:
        regex, template, convertors = compile_path(path)
        if convertors:
            self.templates.append((regex, template))
        else:
            self.exact.setdefault(path, path)

    def __call__(self, path: str) -> str:
        found = self.exact.get(path)
        if found is not None:
            return found
        return next((template for regex, template in self.templates if regex.match(path)), OTHER_ROUTE)


class _LabelledByRoute:
    """One of BentoML's metrics, with its `endpoint` label mapped through RouteLabels."""

    def __init__(self, metric, route: RouteLabels) -> None:
        self.metric, self.route = metric, route

    def labels(self, endpoint: str, **labels):
        return self.metric.labels(endpoint=self.route(endpoint), **labels)


ENDPOINT_LABELLED = ("metrics_request_duration", "metrics_request_total", "metrics_request_in_progress",
                     "metrics_websocket_connections", "metrics_websocket_data_received",
                     "metrics_websocket_data_sent")


async def _metrics_by_route(self: RunnerTrafficMetricsMiddleware, scope, receive, send) -> None:
    """BentoML's request metrics (bentoml_service_request_*) took the raw request path as their
    `endpoint` label, and run before the API key is checked: every distinct path anyone sent
    added ~20 series for good (2,000 paths: 40,000 series and an 8.9 MB /metrics; 10,000:
    /metrics timed out and the metric files grew to 64 MB). The label is now the route that
    serves the path, or "other". Its other labels are the service's name and version (fixed),
    the response status (set by the app) and the runner's name: none is up to the client."""
    if not self._is_setup:
        self._setup()
        route = RouteLabels(scope.get("app"))  # Starlette puts itself in every scope, lifespan included
        for name in ENDPOINT_LABELLED:
            setattr(self, name, _LabelledByRoute(getattr(self, name), route))
    await ORIGINAL["RunnerTrafficMetricsMiddleware.__call__"](self, scope, receive, send)



def _monitor_init_logger(self: DefaultMonitor) -> None:
    """BentoML's default monitor writes the payload log through logging handlers, whose
    handleError() prints '--- Logging error ---' and a traceback (6 kB) to stderr for each row
    it cannot write (a full disk) and counts nothing. Its handlers now report to
    payload_log.row_not_written: counted, logged once per interval."""
    ORIGINAL["DefaultMonitor._init_logger"](self)
    for monitor_logger in (self.data_logger, self.schema_logger):
        for handler in monitor_logger.handlers:  # type: ignore[attr-defined]  # declared None, set by _init_logger
            handler.handleError = functools.partial(payload_log.row_not_written, handler)



FIXES: list[Fix] = [
    Fix("timeout_timer_cancelled", "bentoml", BENTOML, lambda: setattr(TimeoutMiddleware, "__call__", _timeout_call)),
    Fix("retry_after_on_429", "bentoml", BENTOML,
        lambda: setattr(MaxConcurrencyMiddleware, "__call__", _max_concurrency_call_with_retry_after)),
    Fix("own_prometheus_dir", "bentoml", BENTOML,
        lambda: setattr(bentoml.serving, "ensure_prometheus_dir", _own_prometheus_dir)),
    Fix("client_errors_as_warnings", "bentoml", BENTOML,
        lambda: logging.getLogger(HTTP_APP_LOGGER).addFilter(ClientErrorsAsWarnings())),
    # after client_errors_as_warnings: what is left with a traceback is a server error
    Fix("server_errors_rate_limited", "bentoml", BENTOML,
        lambda: logging.getLogger(HTTP_APP_LOGGER).addFilter(RateLimitFilter())),
    Fix("tracing_only_with_an_exporter", "bentoml", BENTOML,
        lambda: _wrap_middlewares(lambda factory, middlewares: _tracing_only_with_an_exporter(middlewares))),
    Fix("client_checks_first", "bentoml", "==1.4.40", lambda: _wrap_middlewares(_client_checks_first)),
    Fix("model_fields_from_the_class", "bentoml", BENTOML, _model_fields_from_the_class,
        also=(("pydantic", PYDANTIC),)),
    Fix("api_signature_cached", "bentoml", BENTOML, _api_signature_cached),
    Fix("payload_log_errors_counted", "bentoml", BENTOML,
        lambda: setattr(DefaultMonitor, "_init_logger", _monitor_init_logger)),
    Fix("metrics_by_route", "bentoml", BENTOML,
        lambda: setattr(RunnerTrafficMetricsMiddleware, "__call__", _metrics_by_route),
        also=(("starlette", STARLETTE),)),
]
