from __future__ import annotations

import asyncio

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from sklearn_service import bentoml_fixes


def run_through_middleware(app, timeout: float):
    bentoml_fixes.apply()
    middleware = TimeoutMiddleware(app, timeout=timeout)

    async def scenario():
        sent = []

        async def send(message):
            sent.append(message)

        await middleware({"type": "http"}, None, send)
        await asyncio.sleep(0)  # let cancelled tasks unwind
        pending = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return sent, pending

    return asyncio.run(scenario())


async def quick_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)


def test_no_timer_outlives_a_finished_request():
    sent, pending = run_through_middleware(quick_app, timeout=30)
    assert sent[0]["status"] == 200 and pending == []


def test_slow_requests_still_get_a_504():
    sent, pending = run_through_middleware(slow_app, timeout=0.05)
    assert sent[0]["status"] == 504 and pending == []


class OpenTelemetryMiddleware:  # stands in for BentoML's span middleware, matched by name
    pass


class Other:
    pass


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


@pytest.mark.parametrize("exporter, kept", [(None, False), ("otlp", True)])
def test_span_middleware_only_with_a_tracing_exporter(monkeypatch, exporter, kept):
    from starlette.middleware import Middleware

    monkeypatch.setattr(bentoml_fixes, "_service_middlewares",
                        lambda self: [Middleware(Other), Middleware(OpenTelemetryMiddleware)])
    monkeypatch.setattr(bentoml_fixes, "BentoMLContainer", FakeTracingConfig(exporter))
    names = [m.cls.__name__ for m in bentoml_fixes._tracing_only_with_an_exporter(None)]
    assert names == (["Other", "OpenTelemetryMiddleware"] if kept else ["Other", "RequestId"])


def test_every_response_carries_its_own_request_id(server, cancer):
    import requests

    ids = {requests.post(server.url + "/predict", json={"features": cancer["X"][0].tolist()}, timeout=5)
           .headers["X-BentoML-Request-ID"] for _ in range(5)}
    assert len(ids) == 5
