"""Fixes for BentoML, uvicorn and prometheus_client internals, applied when service.py is imported.

Each fix names the releases it was written for and checked against (`versions`); at
start-up a fix outside them is skipped with a warning rather than patched blindly
into code that may have changed. tests/test_bentoml_fixes.py shows each bug on the
unpatched code, so after an upgrade those tests say which fixes are still needed.
`app.skip_fixes` in configuration.yaml turns fixes off by name.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Callable

import bentoml.serving
from circus.arbiter import Arbiter
from prometheus_client import mmap_dict
from prometheus_client import values as prometheus_values
from packaging.specifiers import SpecifierSet
from tornado import gen
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server as UvicornServer

from _bentoml_impl.server.app import ServiceAppFactory
import _bentoml_sdk.method as bentoml_method_module
from _bentoml_sdk.io_models import IODescriptor, IOMixin
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.context import trace_context
from bentoml._internal.monitoring.default import DefaultMonitor
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from bentoml._internal.utils.circus import Arbiter as BentoArbiter
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute, compile_path

from sklearn_service import config, payload_log
from sklearn_service.errors import RETRY_AFTER_SECONDS
from sklearn_service.log_limit import RateLimitFilter, limited

logger = logging.getLogger(__name__)

# The code each fix replaces, kept so that tests can show the bug on it.
ORIGINAL = {
    "TimeoutMiddleware.__call__": TimeoutMiddleware.__call__,
    "MaxConcurrencyMiddleware.__call__": MaxConcurrencyMiddleware.__call__,
    "ensure_prometheus_dir": bentoml.serving.ensure_prometheus_dir,
    "Arbiter._stop_watchers": Arbiter._stop_watchers,
    "BentoArbiter.stop": BentoArbiter.stop,
    "ServiceAppFactory.middlewares": ServiceAppFactory.middlewares.fget,
    "IOMixin.mime_type": IOMixin.mime_type.__func__,
    "method.inspect": bentoml_method_module.inspect,
    "RunnerTrafficMetricsMiddleware.__call__": RunnerTrafficMetricsMiddleware.__call__,
    "MmapedDict": prometheus_values.MmapedDict,
    "DefaultMonitor._init_logger": DefaultMonitor._init_logger,
    "HttpToolsProtocol": {name: getattr(HttpToolsProtocol, name) for name in
                          ("connection_made", "on_message_begin", "on_headers_complete", "connection_lost",
                           "shutdown", "_start_asgi_task")},
    "UvicornServer": {name: getattr(UvicornServer, name) for name in ("capture_signals", "shutdown")},
}


@dataclass(frozen=True)
class Fix:
    name: str
    package: str   # the distribution whose internals it patches
    versions: str  # PEP 440 specifier: the releases it was written for and checked against
    install: Callable[[], None]
    also: tuple[tuple[str, str], ...] = ()  # (package, versions) of other code it relies on, guarded alike


# --- BentoML -----------------------------------------------------------------------------------

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
        return True


HTTP_APP_LOGGER = "bentoml._internal.server.http_app"  # where BentoML's log_exception() writes


ENTRY_WATCHER = "service"  # BentoML's name for the entry service's workers; dependencies are service_<Name>


@gen.coroutine
def _stop_entry_service_first(self, close_output_streams=False, watcher_iter_func=None):
    """On SIGTERM circus stopped every service at once: the runner exited in milliseconds
    while the API service was still answering requests that need it (they got 503).
    The entry service now drains first; its dependencies stop after it has exited."""
    watchers = (watcher_iter_func or self.iter_watchers)(reverse=False)
    for stage in ([w for w in watchers if w.name == ENTRY_WATCHER], [w for w in watchers if w.name != ENTRY_WATCHER]):
        yield gen.multi([w._stop(close_output_streams) for w in stage])


def _stop_then_clean_up(self: BentoArbiter):
    """BentoML's arbiter ran its clean-up (which removes the folder of the services' Unix sockets)
    before stopping the services: a draining API worker that needed a new connection to the runner
    found no socket and answered 503. The clean-up now runs once every service has stopped."""
    stopping = Arbiter.stop(self)
    stopping.add_done_callback(lambda _: self.exit_stack.__exit__(None, None, None))
    return stopping


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
    set in configuration.yaml the span middleware stays."""
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


def _cache_mime_type() -> None:
    # mime_type() of a root-model output (the runner's arrays) builds a pydantic
    # TypeAdapter and a whole JSON schema on every response; it depends only on
    # the class, so compute it once per class (~12% of the runner's CPU).
    IOMixin.mime_type = classmethod(functools.lru_cache(maxsize=None)(ORIGINAL["IOMixin.mime_type"]))


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


# --- prometheus_client: metric files on a full filesystem --------------------------------------

class AllocatedMetricFile(mmap_dict.MmapedDict):
    """prometheus_client's per-process metric file, with its pages allocated before use.

    The original sizes the file with truncate(), which allocates nothing, then writes
    through a memory map: on a full tmpfs (Kubernetes' /tmp emptyDir) the first write to an
    unallocated page killed the worker with SIGBUS, and serving stopped. Here the file's
    space is taken with posix_fallocate() first, which fails with an ordinary ENOSPC
    instead. A series that then finds no space (or a process whose file cannot be
    created at all) keeps its value in memory only: served requests are unaffected, /metrics
    lacks that series, and the log says so once per interval with a count.
    """

    dropped = 0  # series of this process kept in memory only

    def __init__(self, filename, read_mode=False):
        self._spilled: dict[str, tuple[float, float]] = {}
        self._memory_only = False
        if not read_mode:
            try:
                with open(filename, "a+b") as f:
                    if os.fstat(f.fileno()).st_size == 0:
                        os.posix_fallocate(f.fileno(), 0, mmap_dict._INITIAL_MMAP_SIZE)
            except OSError as exc:
                if os.path.exists(filename) and os.path.getsize(filename) == 0:
                    os.unlink(filename)  # an empty file would break every /metrics read
                self._memory_only, self._fname, self._f, self._m, self._positions = True, filename, None, None, {}
                self._no_space(exc)
                return
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        try:
            if self._memory_only:
                raise OSError(errno.ENOSPC, "its file could not be created")
            size = len(key.encode())
            needed = self._used + 4 + size + (8 - (size + 4) % 8) + 16  # the entry the original appends
            capacity = self._capacity
            while needed > capacity:
                capacity *= 2
            if capacity > self._capacity:
                os.posix_fallocate(self._f.fileno(), 0, capacity)  # the original's truncate() then finds it
        except OSError as exc:
            self._spilled[key] = (0.0, 0.0)
            AllocatedMetricFile.dropped += 1
            self._no_space(exc)
            return
        super()._init_value(key)

    def _no_space(self, exc: OSError) -> None:
        limited(logger).warning("metric_files_full", "no space for metric file %s (%s): series without space "
                                "are kept in memory only, not on /metrics (%d so far in this process)",
                                self._fname, exc, AllocatedMetricFile.dropped)

    def read_value(self, key: str):
        if key not in self._positions and key not in self._spilled:
            self._init_value(key)
        if key in self._spilled:
            return self._spilled[key]
        return mmap_dict._unpack_two_doubles(self._m, self._positions[key])

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        if key not in self._positions and key not in self._spilled:
            self._init_value(key)
        if key in self._spilled:
            self._spilled[key] = (value, timestamp)
        else:
            mmap_dict._pack_two_doubles(self._m, self._positions[key], value, timestamp)


def _monitor_init_logger(self: DefaultMonitor) -> None:
    """BentoML's default monitor writes the payload log through logging handlers, whose
    handleError() prints '--- Logging error ---' and a traceback (6 kB) to stderr for each row
    it cannot write (a full disk) and counts nothing. Its handlers now report to
    payload_log.row_not_written: counted, logged once per interval."""
    ORIGINAL["DefaultMonitor._init_logger"](self)
    for monitor_logger in (self.data_logger, self.schema_logger):
        for handler in monitor_logger.handlers:
            handler.handleError = functools.partial(payload_log.row_not_written, handler)


# --- uvicorn -----------------------------------------------------------------------------------

def _install_header_deadline() -> None:
    """uvicorn has no time limit on receiving a request's headers: a client trickling one
    header line a second (slowloris) kept its connection for as long as it liked, and a few
    thousand of them exhaust the process's connections. Headers must now be complete within
    app.client_timeout_seconds of the connection opening (or of the request's first byte on a
    kept-alive connection); otherwise the client gets 408 and the connection is closed."""
    seconds = float(config.app()["client_timeout_seconds"])
    original = ORIGINAL["HttpToolsProtocol"]
    body = json.dumps({"error": f"request headers not received within {seconds:g} s",
                       "reason": "request_timeout"}).encode()
    response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def arm(self) -> None:
        if getattr(self, "_header_deadline", None) is None:
            self._header_deadline = self.loop.call_later(seconds, expired, self)

    def disarm(self) -> None:
        if (handle := getattr(self, "_header_deadline", None)) is not None:
            handle.cancel()
            self._header_deadline = None

    def expired(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return arm(self)  # a pipelined request: wait until the one being answered is done
        self.transport.write(response)
        self.transport.close()

    def connection_made(self, transport) -> None:
        original["connection_made"](self, transport)
        arm(self)

    def on_message_begin(self) -> None:
        original["on_message_begin"](self)
        arm(self)

    def on_headers_complete(self) -> None:
        disarm(self)
        original["on_headers_complete"](self)

    def connection_lost(self, exc) -> None:
        disarm(self)
        original["connection_lost"](self, exc)

    for function in (connection_made, on_message_begin, on_headers_complete, connection_lost):
        setattr(HttpToolsProtocol, function.__name__, function)


# --- SIGTERM: a drain that resets nothing (uvicorn in the workers, circus in the arbiter) -----------

SERVER_STOPPING = signal.SIGUSR1  # the arbiter's stop signal to the API workers when the whole server stops


def _install_drain_without_resets() -> None:
    """On SIGTERM, 32 clients under load saw ~32 requests reset (`Connection reset by peer`): the
    public listening socket belongs to the arbiter and every worker (the runner too) inherits it,
    so when an API worker stopped accepting it kept listening; the clients' new connections queued
    in its backlog, where no process would ever accept them, and were reset when the arbiter closed
    it at exit. And uvicorn closed each connection with no request in progress at once, dropping a
    request already on its way (or unread in the receive buffer) on a kept-alive connection.

    Now, when the whole server stops, the arbiter sends its API workers SERVER_STOPPING instead of
    SIGTERM. Each accepts every connection already queued and shuts the listening socket down
    (shutdown() acts on the socket itself, in every process holding it), so from then on a connect
    is refused and a client or load balancer can go elsewhere; then it drains as on SIGTERM. A SIGTERM
    to one worker (a restart, `--reload`) leaves the socket to the others. While draining, a connection
    with no request in progress stays open for uvicorn's keep-alive timeout; a request that arrives on
    it is answered, with `Connection: close`."""
    capture, server_shutdown = UvicornServer.capture_signals, UvicornServer.shutdown
    protocol_shutdown, start_asgi_task = HttpToolsProtocol.shutdown, HttpToolsProtocol._start_asgi_task
    stop_watchers = Arbiter._stop_watchers

    @contextlib.contextmanager
    def capture_signals(self: UvicornServer):
        def server_stopping(sig, frame) -> None:
            self.stops_listening = True
            self.handle_exit(signal.SIGTERM, frame)

        with capture(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(SERVER_STOPPING, server_stopping)
            try:
                yield
            finally:
                signal.signal(SERVER_STOPPING, previous)

    async def shutdown(self: UvicornServer, sockets=None) -> None:
        if getattr(self, "stops_listening", False):
            queued = _accept_queued_and_stop_listening(sockets or [])
            for server in self.servers:
                server.close()
            loop, config = asyncio.get_running_loop(), self.config
            for connection in queued:
                try:
                    await loop.connect_accepted_socket(
                        lambda: config.http_protocol_class(config=config, server_state=self.server_state,
                                                           app_state=self.lifespan.state),
                        connection, ssl=config.ssl)
                except OSError:  # the client has gone
                    connection.close()
        await server_shutdown(self, sockets)

    def connection_shutdown(self: HttpToolsProtocol) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return protocol_shutdown(self)  # answers with Connection: close, then closes
        self.draining = True
        if self.scope is None and self.timeout_keep_alive_task is None:  # nothing received yet
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def start_request(self: HttpToolsProtocol, cycle, app) -> None:
        if getattr(self, "draining", False):
            cycle.keep_alive = False
        start_asgi_task(self, cycle, app)

    @gen.coroutine
    def stop_watchers_telling_the_api_workers(self: Arbiter, close_output_streams=False, watcher_iter_func=None):
        if self._stopping:  # the arbiter exits (not a restart): the listening socket goes too
            for watcher in (watcher_iter_func or self.iter_watchers)(reverse=False):
                if watcher.name == ENTRY_WATCHER:
                    watcher.stop_signal = SERVER_STOPPING
        yield stop_watchers(self, close_output_streams, watcher_iter_func)

    UvicornServer.capture_signals, UvicornServer.shutdown = capture_signals, shutdown
    HttpToolsProtocol.shutdown, HttpToolsProtocol._start_asgi_task = connection_shutdown, start_request
    Arbiter._stop_watchers = stop_watchers_telling_the_api_workers


def _accept_queued_and_stop_listening(listeners: list[socket.socket]) -> list[socket.socket]:
    """Connections the kernel has queued on the listening sockets, taken before the sockets are shut
    down so that none is reset. No await in between: the window for a connection to slip in is the
    one system call from the last accept to shutdown. Another worker may have shut a socket first."""
    queued = []
    for listener in listeners:
        with contextlib.suppress(OSError):  # BlockingIOError: none left; EINVAL: no longer listening
            while True:
                queued.append(listener.accept()[0])
        with contextlib.suppress(OSError):  # ENOTCONN: already shut down
            listener.shutdown(socket.SHUT_RDWR)
    return queued


# --- which fix, for which releases -----------------------------------------------------------

WRITTEN_FOR = ">=1.4.30,<=1.4.40"  # the BentoML releases whose source these were checked against

FIXES = [
    Fix("timeout_timer_cancelled", "bentoml", WRITTEN_FOR,
        lambda: setattr(TimeoutMiddleware, "__call__", _timeout_call)),
    Fix("retry_after_on_429", "bentoml", WRITTEN_FOR,
        lambda: setattr(MaxConcurrencyMiddleware, "__call__", _max_concurrency_call_with_retry_after)),
    Fix("own_prometheus_dir", "bentoml", WRITTEN_FOR,
        lambda: setattr(bentoml.serving, "ensure_prometheus_dir", _own_prometheus_dir)),
    Fix("client_errors_as_warnings", "bentoml", WRITTEN_FOR,
        lambda: logging.getLogger(HTTP_APP_LOGGER).addFilter(ClientErrorsAsWarnings())),
    # after client_errors_as_warnings: what is left with a traceback is a server error
    Fix("server_errors_rate_limited", "bentoml", WRITTEN_FOR,
        lambda: logging.getLogger(HTTP_APP_LOGGER).addFilter(RateLimitFilter())),
    Fix("entry_service_stops_first", "bentoml", WRITTEN_FOR,
        lambda: setattr(Arbiter, "_stop_watchers", _stop_entry_service_first)),
    Fix("socket_folder_removed_last", "bentoml", WRITTEN_FOR,
        lambda: setattr(BentoArbiter, "stop", _stop_then_clean_up)),
    Fix("tracing_only_with_an_exporter", "bentoml", WRITTEN_FOR,
        lambda: _wrap_middlewares(lambda factory, middlewares: _tracing_only_with_an_exporter(middlewares))),
    Fix("client_checks_first", "bentoml", "==1.4.40",
        lambda: _wrap_middlewares(_client_checks_first)),
    Fix("mime_type_cached", "bentoml", WRITTEN_FOR, _cache_mime_type),
    Fix("model_fields_from_the_class", "bentoml", WRITTEN_FOR, _model_fields_from_the_class),
    Fix("api_signature_cached", "bentoml", WRITTEN_FOR, _api_signature_cached),
    Fix("payload_log_errors_counted", "bentoml", WRITTEN_FOR,
        lambda: setattr(DefaultMonitor, "_init_logger", _monitor_init_logger)),
    Fix("metrics_by_route", "bentoml", WRITTEN_FOR,
        lambda: setattr(RunnerTrafficMetricsMiddleware, "__call__", _metrics_by_route)),
    Fix("header_timeout", "uvicorn", "==0.54.0", _install_header_deadline),
    Fix("drain_without_resets", "uvicorn", "==0.54.0", _install_drain_without_resets,
        also=(("kantoku", "==0.18.3"), ("bentoml", WRITTEN_FOR))),
    Fix("metric_files_allocated", "prometheus_client", "==0.26.0",
        lambda: setattr(prometheus_values, "MmapedDict", AllocatedMetricFile)),
]

_status: dict[str, str] = {}  # name -> "applied" or why not; each fix is installed once per process


def status(fix: Fix, skip: frozenset[str]) -> str:
    if fix.name in skip:
        return "skipped: listed in app.skip_fixes"
    for package, versions in ((fix.package, fix.versions), *fix.also):
        found = installed_version(package)
        if found not in SpecifierSet(versions):
            return f"skipped: written for {package} {versions}, installed {found}; see tests/test_bentoml_fixes.py"
    return "applied"


def apply() -> dict[str, str]:
    """Installs every fix that fits the installed versions; returns each fix's status."""
    skip = frozenset(config.app()["skip_fixes"])
    for fix in FIXES:
        if fix.name in _status:
            continue
        _status[fix.name] = status(fix, skip)
        if _status[fix.name] == "applied":
            fix.install()
            logger.debug("fix %s applied", fix.name)
        else:
            logger.warning("fix %s %s", fix.name, _status[fix.name])
    return dict(_status)
