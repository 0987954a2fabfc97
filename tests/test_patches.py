"""sklearn_service/patches/: each fix is version-guarded, and each bug shows on the unpatched code.

The `*_on_unpatched_*` tests run BentoML's (or uvicorn's) own code, kept in patches.ORIGINAL or
served with the fix listed in app.skip_fixes. After an upgrade, one that fails means upstream fixed
that bug: drop the fix. One that passes while its fix is skipped means the fix is still needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from importlib.metadata import version

import bentoml
import numpy as np
import pytest
import requests
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware

from harness.load import run_load
from harness.prometheus_text import scrape
from harness.serving import Server, write_config
from sklearn_service import patches
from sklearn_service.middleware import RequestGuard
from sklearn_service.patches import ORIGINAL, Fix
from sklearn_service.patches import bentoml as bentoml_patches
from sklearn_service.patches import uvicorn as uvicorn_patches
from sklearn_service.patches import kantoku as kantoku_patches
from sklearn_service.schemas import JsonArray


@pytest.fixture(scope="module", autouse=True)
def applied():
    return patches.apply()


def test_every_fix_applies_to_the_pinned_versions(applied):
    assert applied == {fix.name: "applied" for fix in patches.FIXES}


def test_a_fix_written_for_other_versions_is_skipped_with_a_warning(monkeypatch, caplog):
    installed = []
    monkeypatch.setattr(patches, "FIXES", [Fix("from_the_future", "bentoml", ">=9", lambda: installed.append(1))])
    monkeypatch.setattr(patches, "_status", {})
    with caplog.at_level(logging.WARNING, logger=patches.__name__):
        status = patches.apply()
    assert installed == [] and status["from_the_future"].startswith("skipped: written for bentoml >=9")
    assert f"installed {version('bentoml')}" in caplog.text and "from_the_future" in caplog.text


# --- timeout_timer_cancelled -------------------------------------------------------------------

def run_through_timeout(app, timeout: float, call):
    middleware = TimeoutMiddleware(app, timeout=timeout)

    async def scenario():
        sent = []

        async def send(message):
            sent.append(message)

        await call(middleware, {"type": "http"}, None, send)
        await asyncio.sleep(0)  # let cancelled tasks unwind
        pending = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return sent, pending

    return asyncio.run(scenario())


async def quick_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)


def test_timer_outlives_a_finished_request_on_unpatched_bentoml():
    sent, pending = run_through_timeout(quick_app, 30, ORIGINAL["TimeoutMiddleware.__call__"])
    assert sent[0]["status"] == 200 and len(pending) == 1


def test_no_timer_outlives_a_finished_request():
    sent, pending = run_through_timeout(quick_app, 30, TimeoutMiddleware.__call__)
    assert sent[0]["status"] == 200 and pending == []


def test_slow_requests_still_get_a_504():
    sent, pending = run_through_timeout(slow_app, 0.05, TimeoutMiddleware.__call__)
    assert sent[0]["status"] == 504 and pending == []


# --- retry_after_on_429 ------------------------------------------------------------------------

def second_of_two_concurrent(call) -> dict:
    middleware = MaxConcurrencyMiddleware(slow_app, max_concurrency=1)

    async def scenario():
        sent = []

        async def send(message):
            sent.append(message)

        first = asyncio.ensure_future(call(middleware, {"type": "http", "path": "/predict"}, None, send))
        await asyncio.sleep(0.01)
        await call(middleware, {"type": "http", "path": "/predict"}, None, send)
        first.cancel()
        return sent[0]

    return asyncio.run(scenario())


def test_429_without_retry_after_on_unpatched_bentoml():
    start = second_of_two_concurrent(ORIGINAL["MaxConcurrencyMiddleware.__call__"])
    assert start["status"] == 429 and b"retry-after" not in dict(start["headers"])


def test_429_says_when_to_retry():
    start = second_of_two_concurrent(MaxConcurrencyMiddleware.__call__)
    assert start["status"] == 429 and dict(start["headers"])[b"retry-after"] == b"1"


# --- own_prometheus_dir ------------------------------------------------------------------------

def test_starting_a_server_wipes_the_shared_metrics_dir_on_unpatched_bentoml(tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"another server's counters")
    ORIGINAL["ensure_prometheus_dir"](directory=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_each_server_gets_its_own_metrics_dir(tmp_path):
    shared = tmp_path / "counter_1.db"
    shared.write_bytes(b"another server's counters")
    # called as the unpatched test calls BentoML's own: the shared directory named
    first, second = (bentoml.serving.ensure_prometheus_dir(directory=str(tmp_path)) for _ in range(2))
    assert len({first, second, str(tmp_path)}) == 3
    assert all(os.path.isdir(d) and not os.listdir(d) for d in (first, second))
    assert shared.read_bytes() == b"another server's counters"


# --- client_errors_as_warnings -----------------------------------------------------------------

def log_errors(monkeypatch, filters: list, fail, count: int = 1) -> list[logging.LogRecord]:
    """What BentoML's request handler logs for `count` requests whose handling raised as `fail()` does."""
    from bentoml._internal.server.http_app import log_exception
    from starlette.requests import Request

    http_app = logging.getLogger(bentoml_patches.HTTP_APP_LOGGER)
    monkeypatch.setattr(http_app, "filters", filters)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    http_app.addHandler(handler)
    try:
        for _ in range(count):
            try:
                fail()
            except Exception as exc:
                log_exception(Request({"type": "http", "method": "POST", "path": "/predict", "headers": []}),
                              exc_info=(type(exc), exc, exc.__traceback__))
    finally:
        http_app.removeHandler(handler)
    return records


def log_a_client_error(monkeypatch, filters: list) -> logging.LogRecord:
    from pydantic import BaseModel

    (record,) = log_errors(monkeypatch, filters, lambda: type("Row", (BaseModel,), {"__annotations__": {"x": int}})
                           .model_validate({"x": "not a number"}))
    return record


def test_client_errors_logged_as_errors_with_traceback_on_unpatched_bentoml(monkeypatch):
    record = log_a_client_error(monkeypatch, [])
    assert record.levelno == logging.ERROR and record.exc_info


def test_client_errors_logged_as_one_line_warnings(monkeypatch):
    record = log_a_client_error(monkeypatch, [bentoml_patches.ClientErrorsAsWarnings()])
    assert record.levelno == logging.WARNING and not record.exc_info and "client error" in record.getMessage()


def log_server_errors(monkeypatch, filters: list, count: int) -> list[logging.LogRecord]:
    def bug():
        raise RuntimeError("a bug in the API function")

    return log_errors(monkeypatch, filters, bug, count)


def test_every_server_error_logs_a_traceback_on_unpatched_bentoml(monkeypatch):
    records = log_server_errors(monkeypatch, [bentoml_patches.ClientErrorsAsWarnings()], 200)
    assert len(records) == 200 and all(r.exc_info for r in records)


def test_repeated_server_errors_log_one_traceback_per_interval(monkeypatch):
    from sklearn_service.log_limit import RateLimitFilter

    clock = [0.0]
    limit = RateLimitFilter(interval=10, clock=lambda: clock[0])
    filters = [bentoml_patches.ClientErrorsAsWarnings(), limit]
    first = log_server_errors(monkeypatch, filters, 200)
    clock[0] = 11
    later = log_server_errors(monkeypatch, filters, 1)
    assert len(first) == 1 and first[0].exc_info
    assert len(later) == 1 and not later[0].exc_info and "(and 199 more like it in the last 11 s)" in later[0].getMessage()
    client = log_a_client_error(monkeypatch, filters)  # client errors stay one-line warnings, each of them
    assert client.levelno == logging.WARNING


def test_repeated_client_errors_log_one_warning_per_interval(monkeypatch):
    from pydantic import BaseModel

    from sklearn_service.log_limit import RateLimitFilter

    clock = [0.0]
    filters = [bentoml_patches.ClientErrorsAsWarnings(), RateLimitFilter(interval=10, clock=lambda: clock[0])]

    def bad_row():
        type("Row", (BaseModel,), {"__annotations__": {"x": int}}).model_validate({"x": "not a number"})

    first = log_errors(monkeypatch, filters, bad_row, 100)
    clock[0] = 11
    later = log_errors(monkeypatch, filters, bad_row, 1)
    assert len(first) == 1 and first[0].levelno == logging.WARNING
    assert len(later) == 1 and "(and 99 more like it in the last 11 s)" in later[0].getMessage()


def test_malformed_requests_log_one_warning_per_interval(monkeypatch):
    from sklearn_service.log_limit import RateLimitFilter

    # uvicorn's parsers log this line, without a traceback, for every malformed request
    logger, clock, records = logging.getLogger("uvicorn.error"), [0.0], []
    limit = RateLimitFilter(interval=10, clock=lambda: clock[0], messages=uvicorn_patches.INVALID_REQUEST)
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setattr(logger, "filters", [limit])  # only this filter, whatever apply() installed
    logger.addHandler(handler)
    try:
        for _ in range(100):
            logger.warning("Invalid HTTP request received.")
        logger.warning("another warning")  # not a per-request line: never held back
        clock[0] = 11
        logger.warning("Invalid HTTP request received.")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "Invalid HTTP request received.", "another warning",
        "Invalid HTTP request received. (and 99 more like it in the last 11 s)"]


# --- entry_service_stops_first -----------------------------------------------------------------

class Watcher:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    async def _stop(self, close_output_streams):
        self.log.append(("stopping", self.name))
        await asyncio.sleep(0.01)
        self.log.append(("stopped", self.name))


def stop_order(stop_watchers) -> list:
    log = []
    watchers = [Watcher("service_ModelRunner", log), Watcher("service", log)]

    async def scenario():
        await stop_watchers(None, watcher_iter_func=lambda reverse: watchers)

    asyncio.run(scenario())
    return log


def test_runner_stops_while_the_api_service_drains_on_unpatched_bentoml():
    log = stop_order(ORIGINAL["Arbiter._stop_watchers"])
    assert log.index(("stopping", "service_ModelRunner")) < log.index(("stopped", "service"))


def test_runner_stops_after_the_api_service():
    assert stop_order(kantoku_patches._stop_entry_service_first) == [
        ("stopping", "service"), ("stopped", "service"),
        ("stopping", "service_ModelRunner"), ("stopped", "service_ModelRunner")]


# --- dead_service_restarted_within_a_second ---------------------------------------------------

def seconds_to_restart(controller_start, monkeypatch, wait: float) -> float | None:
    """A real arbiter, made as `bentoml serve` makes it, with one process that is killed at once:
    the arbiter's first check comes one check interval after its start."""
    from circus.controller import Controller
    from circus.watcher import Watcher as CircusWatcher

    from bentoml._internal.utils.circus import create_standalone_arbiter

    monkeypatch.setattr(Controller, "start", controller_start)
    watcher = CircusWatcher("sleeper", sys.executable, args=["-c", "import time; time.sleep(60)"], respawn=True)
    arbiter = create_standalone_arbiter([watcher], threaded=True)
    arbiter.start()
    try:
        deadline = time.monotonic() + 10
        while not watcher.processes and time.monotonic() < deadline:
            time.sleep(0.05)
        (first,) = watcher.processes.values()
        os.kill(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < wait:
            if {p.pid for p in watcher.processes.values()} - {first.pid}:
                return time.monotonic() - killed
            time.sleep(0.05)
        return None
    finally:
        arbiter.stop()


def test_a_killed_process_waits_for_the_ten_second_check_on_unpatched_bentoml(monkeypatch):
    assert seconds_to_restart(kantoku_patches.ORIGINAL["Controller.start"], monkeypatch, wait=4) is None


def test_a_killed_process_is_restarted_within_a_second_or_so(monkeypatch):
    seconds = seconds_to_restart(kantoku_patches._check_every_second, monkeypatch, wait=4)
    assert seconds is not None and seconds < 2.5, seconds


# --- tracing_only_with_an_exporter, client_checks_first: BentoML's middleware stack ------------

@pytest.fixture(scope="module")
def tiny_factory():
    from _bentoml_impl.server.app import ServiceAppFactory

    @bentoml.service(traffic={"timeout": 5, "max_concurrency": 4})
    class Tiny:
        @bentoml.api
        def echo(self, x: int) -> int:
            return x

    Tiny.add_asgi_middleware(RequestGuard, max_bytes=10)
    Tiny.inject_config()
    return ServiceAppFactory(Tiny, is_main=True)


def names(middlewares) -> list[str]:
    return [m.cls.__name__ for m in middlewares]


def test_spans_and_own_middleware_inside_the_limits_on_unpatched_bentoml(tiny_factory):
    stack = names(ORIGINAL["ServiceAppFactory.middlewares"](tiny_factory))
    assert "OpenTelemetryMiddleware" in stack  # with no exporter configured
    assert stack.index("RequestGuard") > stack.index("MaxConcurrencyMiddleware") > stack.index("TimeoutMiddleware")


def test_no_spans_and_own_middleware_before_the_limits(tiny_factory):
    stack = names(tiny_factory.middlewares)
    assert "OpenTelemetryMiddleware" not in stack and "RequestId" in stack
    assert stack.index("RequestGuard") < stack.index("TimeoutMiddleware") < stack.index("MaxConcurrencyMiddleware")


class FakeTracingConfig:
    def __init__(self, exporter):
        self.exporter = exporter

    @property
    def config(self):
        return self

    @property
    def tracing(self):
        return self

    @property
    def exporter_type(self):
        return self

    def get(self):
        return self.exporter


def test_span_middleware_stays_with_a_tracing_exporter(monkeypatch, tiny_factory):
    monkeypatch.setattr(bentoml_patches, "BentoMLContainer", FakeTracingConfig("otlp"))
    stack = names(bentoml_patches._tracing_only_with_an_exporter(ORIGINAL["ServiceAppFactory.middlewares"](tiny_factory)))
    assert "OpenTelemetryMiddleware" in stack and "RequestId" not in stack


def request_ids_under_span_middleware(tiny_factory, excluded_urls: str | None) -> list:
    """The request ids BentoML's app sees under its span middleware, with `tracing.excluded_urls` set
    as given (parsed as BentoML parses it)."""
    from bentoml._internal.context import trace_context
    from opentelemetry.util.http import ExcludeList, parse_excluded_urls

    stack = ORIGINAL["ServiceAppFactory.middlewares"](tiny_factory)
    (span,) = [m for m in stack if m.cls.__name__ == "OpenTelemetryMiddleware"]
    seen = []

    async def app(scope, receive, send):
        seen.append(trace_context.request_id)

    excluded = parse_excluded_urls(excluded_urls) if excluded_urls else ExcludeList([])
    middleware = span.cls(app, *span.args, **{**span.kwargs, "excluded_urls": excluded})
    scope = {"type": "http", "method": "POST", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "scheme": "http", "server": ("127.0.0.1", 3000),
             "http_version": "1.1"}

    async def requests_in_turn():
        for _ in range(3):
            await asyncio.create_task(middleware(dict(scope), None, None))

    asyncio.run(requests_in_turn())
    return seen


def test_public_tracing_setting_drops_the_span_and_the_request_id(tiny_factory):
    """Why tracing_only_with_an_exporter is a patch: `tracing.excluded_urls: ".*"` skips the span too,
    but BentoML takes the request id from the span, so no request would get one."""
    assert len(set(request_ids_under_span_middleware(tiny_factory, None)) - {None}) == 3
    assert request_ids_under_span_middleware(tiny_factory, ".*") == [None] * 3


def test_every_response_carries_its_own_request_id(server, cancer):
    ids = {requests.post(server.url + "/predict", json={"features": cancer["X"][0].tolist()}, timeout=5)
           .headers["X-BentoML-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


# --- the runner's media type (public route, no fix) ----------------------------------------------

def schema_builds(service, monkeypatch, api: str = "echo") -> int:
    spec = service.apis[api].output_spec
    calls = []
    original = spec.model_json_schema.__func__
    monkeypatch.setattr(spec, "model_json_schema", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    for _ in range(3):
        assert spec.mime_type() == "application/json"
    return len(calls)


def test_json_schema_built_for_every_array_response_without_a_media_type(tiny_factory, monkeypatch):
    assert schema_builds(tiny_factory.service, monkeypatch) == 3


def test_the_runners_return_type_builds_no_schema(monkeypatch):
    """Why the runner's APIs return schemas.JsonArray: BentoML names the response's media type
    without building the array's JSON schema each time."""
    @bentoml.service
    class Typed:
        @bentoml.api
        def rows(self, rows: np.ndarray) -> JsonArray:
            return rows

    assert schema_builds(Typed, monkeypatch, "rows") == 0


# --- model_fields_from_the_class -----------------------------------------------------------------

def input_fields_warnings(read) -> tuple[list, list]:
    """What BentoML's request handler does for every request: the input's fields, read off the instance."""
    import warnings

    from pydantic import BaseModel

    @bentoml.service
    class Fields:
        @bentoml.api
        def echo(self, x: int, y: str = "a") -> int:
            return x

    data = Fields.apis["echo"].input_spec(x=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fields = list(read(BaseModel, data))
    return fields, [w for w in caught if "model_fields" in str(w.message)]


def test_reading_input_fields_warns_on_every_request_on_unpatched_bentoml():
    fields, warned = input_fields_warnings(lambda base, data: base.__dict__["model_fields"].__get__(data, type(data)))
    assert fields == ["x", "y"] and warned


def test_input_fields_read_without_a_warning():
    fields, warned = input_fields_warnings(lambda base, data: data.model_fields)
    assert fields == ["x", "y"] and not warned


# --- api_signature_cached ----------------------------------------------------------------------

def look_up_five_times(monkeypatch, module_inspect) -> None:
    """What BentoML does for every request: look the API method up on the service instance."""
    import _bentoml_sdk.method as method_module

    @bentoml.service
    class Lookups:
        @bentoml.api
        def echo(self, x: int) -> int:
            return x

    monkeypatch.setattr(method_module, "inspect", module_inspect)
    instance = Lookups()
    for _ in range(5):
        assert instance.echo.local(x=3) == 3


def test_signature_built_on_every_lookup_on_unpatched_bentoml(monkeypatch):
    import inspect

    built = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda f, **k: built.append(f) or real(f, **k))
    look_up_five_times(monkeypatch, ORIGINAL["method.inspect"])
    assert len([f for f in built if f.__name__ == "echo"]) >= 5


def test_signature_built_once_per_function(monkeypatch):
    cached = bentoml_patches._CachedSignatures()
    cached.signature.cache_clear()
    look_up_five_times(monkeypatch, cached)
    info = cached.signature.cache_info()
    assert info.hits >= 4 and info.misses <= 2


# --- runner_connection (configuration, not a patch): BentoML's session refresh -----------------

def mixed_requests(cancer, count: int) -> list:
    rows = cancer["X"]
    paths = [("/predict", lambda r: {"features": r}), ("/predict_proba", lambda r: {"features": r}),
             ("/predict_batch", lambda r: {"instances": [r] * 20})]
    return [(paths[i % 3][0], paths[i % 3][1](rows[i % len(rows)].tolist())) for i in range(count)]


def test_session_refresh_aborts_calls_in_flight_on_bentoml_defaults(tmp_path, bentoml_home, trained, cancer):
    """BentoML's runner_connection mechanism (by default a refresh every 100 calls), refreshing on
    every call so that it shows in seconds: calls that overlap a refresh fail with
    ServerDisconnectedError (503 here). configuration.yaml turns the refresh off; the soak in
    test_reliability shows 0 errors with it."""
    def refresh_often(settings):
        settings["services"]["ModelRunner"]["runner_connection"] = {"max_requests": 1}

    statuses = Counter()
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(write_config(tmp_path, refresh_often))}) as srv:
        for _ in range(5):  # overlaps are a matter of timing: a few bounded rounds
            statuses.update(r.status for r in run_load(srv.url, mixed_requests(cancer, 1500), clients=64))
            if statuses[503]:
                break
    log = srv.log_path.read_text(errors="replace")
    assert statuses[503] > 0 and "ServerDisconnectedError" in log, (statuses, log[-3000:])


# --- header_timeout and client_checks_first on a real server -----------------------------------

def open_slowloris(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Trickles one header line every 0.5 s; whether the server closed the connection in time."""
    deadline, answer = time.monotonic() + seconds, b""
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"X-Slow: 1\r\n")
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return True, answer
        if not chunk:
            return True, answer
        answer += chunk
    return False, answer


@pytest.fixture(scope="module")
def unpatched_server(tmp_path_factory, bentoml_home, trained):
    def unpatched(settings):
        settings["app"]["skip_fixes"] = ["header_timeout", "client_checks_first", "metrics_by_route"]
        settings["app"]["client_timeout_seconds"] = 3
        settings["services"]["SklearnService"]["traffic"]["timeout"] = 1.5

    config_path = write_config(tmp_path_factory.mktemp("unpatched"), unpatched)
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(config_path)}) as srv:
        yield srv


def test_unpatched_server_says_so_at_start(unpatched_server):
    assert "fix header_timeout skipped: listed in app.skip_fixes" in unpatched_server.log()


def test_trickled_headers_hold_the_connection_on_unpatched_uvicorn(unpatched_server):
    with open_slowloris(unpatched_server.url) as sock:
        assert closed_within(sock, 4.5) == (False, b"")  # well past client_timeout_seconds (3)


def test_declared_body_never_sent_gets_a_504_on_unpatched_bentoml(unpatched_server):
    """With client_checks_first off, RequestGuard waits for the body inside BentoML's request
    timeout, which answers first: a server error for a client's fault."""
    host, port = unpatched_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"features\"")
        assert sock.recv(4096).startswith(b"HTTP/1.1 504")


# --- metrics_by_route ----------------------------------------------------------------------------

def endpoint_labels(url: str) -> set[str]:
    return {dict(labels)["endpoint"] for (name, labels), _ in scrape(url).items()
            if name.startswith("bentoml_service_request") and "endpoint" in dict(labels)}


def send_distinct_paths(url: str, count: int, tag: str) -> None:
    with requests.Session() as session:  # no API key needed: the metrics ran before any check
        for i in range(count):
            session.get(f"{url}/{tag}-{i}", timeout=5)


def test_every_request_path_becomes_a_label_value_on_unpatched_bentoml(unpatched_server):
    send_distinct_paths(unpatched_server.url, 50, "probe")
    assert {f"/probe-{i}" for i in range(50)} <= endpoint_labels(unpatched_server.url)


def test_label_values_are_the_routes_and_other(server, trained):
    name, version = trained["tag"].split(":")
    for path in ("/metadata", "/livez", "/v2/health/live", "/v2", f"/v2/models/{name}", f"/v2/models/{name}/ready",
                 f"/v2/models/nope/versions/{version}/ready", "/static_content/swagger-ui.css", "/docs.json"):
        requests.get(server.url + path, timeout=5)
    requests.post(f"{server.url}/v2/models/any-name-{version}/infer", json={}, timeout=5)
    send_distinct_paths(server.url, 20, "first")
    before = scrape(server.url)
    send_distinct_paths(server.url, 300, "many")
    after = scrape(server.url)

    routes = {"/predict", "/predict_batch", "/predict_proba", "/predict_all", "/explain", "/explain_batch",
              "/metadata", "/livez", "/healthz",
              "/readyz", "/metrics", "/", "/docs.json", "/schema.json", "/static_content/{path}", "/v2",
              "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/versions/{version}",
              "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready",
              "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer", "other",
              # the runner's routes for any model, the repository, and the per-model classic routes (each model
              # configured at start-up has its own paths: their number is the configuration's, not the clients')
              "/infer", "/load", "/v2/repository/index", "/v2/repository/models/{name}/load",
              "/v2/repository/models/{name}/unload", "/models", "/models/{name}/metadata", "/models/{name}/{route}",
              *(f"/models/{name}/{route}" for route in ("predict", "predict_batch", "predict_proba", "explain",
                                                        "explain_batch"))}
    seen = endpoint_labels(server.url)
    assert {"other", "/v2/models/{name}/infer", "/v2/health/live", "/static_content/{path}", "/metadata"} <= seen
    assert seen <= routes, seen - routes
    assert set(after) == set(before)  # 300 new paths, not one new series
    total = "bentoml_service_request_total"
    assert sum(v for (n, ls), v in after.items() if n == total and ("endpoint", "other") in ls) - \
        sum(v for (n, ls), v in before.items() if n == total and ("endpoint", "other") in ls) == 300


def test_route_labels_of_an_app_with_mounts():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def nothing(request):
        return None

    class Aliases:
        ROUTES = ("/v2/health/live",)

        def __init__(self, app):
            self.app = app

    inner = Starlette(routes=[Route("/v2/models/{name}/infer", nothing), Route("/v2", nothing)])
    app = Starlette(routes=[Route("/predict", nothing), Mount("/", inner),
                            Mount("/static", StaticFiles(directory=".", check_dir=False))],
                    middleware=[Middleware(Aliases)])
    route = bentoml_patches.RouteLabels(app)
    assert [route(path) for path in ("/predict", "/v2/models/m/infer", "/v2/models/a/b/infer", "/v2", "/v2/",
                                     "/static/x/y.css", "/v2/health/live", "/predict/", "/" + "x" * 20000)] == \
        ["/predict", "/v2/models/{name}/infer", "other", "/v2", "other", "/static/{path}", "/v2/health/live",
         "other", "other"]


# --- every fix is guarded on each package whose internals it touches ---------------------------

@pytest.mark.parametrize("name, package", [
    ("timeout_timer_cancelled", "bentoml"), ("entry_service_stops_first", "kantoku"),
    ("entry_service_stops_first", "bentoml"), ("socket_folder_removed_last", "kantoku"),
    ("model_fields_from_the_class", "pydantic"), ("metrics_by_route", "starlette"),
    ("header_timeout", "uvicorn"), ("drain_without_resets", "kantoku"),
    ("metric_files_allocated", "prometheus_client"), ("dead_service_restarted_within_a_second", "kantoku"),
])
def test_a_fix_is_skipped_when_a_package_it_touches_changes(monkeypatch, name, package):
    monkeypatch.setattr(patches, "installed_version", lambda p: "999.0" if p == package else version(p))
    (fix,) = [f for f in patches.FIXES if f.name == name]
    assert patches.status(fix, frozenset()).startswith(f"skipped: written for {package} ")
