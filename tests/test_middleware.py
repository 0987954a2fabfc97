from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sklearn_service.middleware import ApiKeyAuth, RequestGuard


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"length": len(await request.body())})


def client(*middleware) -> TestClient:
    app = Starlette(routes=[Route(path, echo, methods=["GET", "POST"])
                            for path in ("/predict", "/metrics", "/livez", "/readyz")])
    for cls, options in middleware:
        app.add_middleware(cls, **options)
    return TestClient(app)


def test_request_guard_passes_small_json_bodies_through_whole():
    answer = client((RequestGuard, {"max_bytes": 100})).post("/predict", content=b"x" * 100)
    assert answer.json() == {"length": 100}


def test_request_guard_refuses_large_bodies_declared_or_streamed():
    guarded = client((RequestGuard, {"max_bytes": 100}))
    assert guarded.post("/predict", content=b"x" * 101).status_code == 413
    streamed = guarded.post("/predict", content=iter([b"x" * 60, b"x" * 60]))
    assert streamed.status_code == 413 and streamed.json()["reason"] == "body_too_large"


@pytest.mark.parametrize("content_type", ["application/vnd.bentoml+pickle", "multipart/form-data",
                                          "application/x-www-form-urlencoded", "Multipart/Mixed; boundary=x"])
def test_request_guard_refuses_non_json_encodings(content_type):
    answer = client((RequestGuard, {"max_bytes": 100})).post("/predict", content=b"{}",
                                                             headers={"Content-Type": content_type})
    assert answer.status_code == 415 and answer.json()["reason"] == "unsupported_media_type"


@pytest.mark.parametrize("protect_metrics, metrics_status", [(False, 200), (True, 401)])
def test_api_key_optionally_guards_metrics(protect_metrics, metrics_status):
    keyed = client((ApiKeyAuth, {"api_key": "k", "protect_metrics": protect_metrics}))
    assert keyed.get("/metrics").status_code == metrics_status
    assert keyed.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    assert keyed.get("/livez").status_code == 200 and keyed.get("/readyz").status_code == 200
    assert keyed.post("/predict").status_code == 401


def guard_a_body_that_never_ends(body_seconds: float) -> tuple[list, float]:
    """RequestGuard around an app, fed one chunk and then nothing (a client that stalls)."""
    import asyncio
    import time

    async def never_reached(scope, receive, send):
        raise AssertionError("the app must not run")

    async def scenario():
        chunks = [{"type": "http.request", "body": b'{"features"', "more_body": True}]
        sent = []

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        start = time.monotonic()
        await RequestGuard(never_reached, max_bytes=100, body_seconds=body_seconds)(
            {"type": "http", "headers": [(b"content-length", b"100")]}, receive, send)
        return sent, time.monotonic() - start

    return asyncio.run(scenario())


def test_request_guard_answers_408_to_a_body_that_stops_coming():
    sent, seconds = guard_a_body_that_never_ends(0.2)
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b'"reason":"request_timeout"' in sent[1]["body"] and 0.2 <= seconds < 1


@pytest.mark.parametrize("header, status", [("Bearer k", 200), ("bearer k", 200), ("BEARER  k", 200),
                                            ("Bearer kk", 401), ("Basic k", 401), ("k", 401), ("Bearer", 401)])
def test_api_key_scheme_is_case_insensitive(header, status):
    keyed = client((ApiKeyAuth, {"api_key": "k"}))
    assert keyed.post("/predict", headers={"Authorization": header}).status_code == status


@pytest.mark.parametrize("name, values", [
    ("content-type", ["multipart/form-data", "application/json"]),  # Starlette reads the first, a dict the last
    ("content-type", ["application/json", "multipart/form-data"]),
    ("content-type", ["application/json", "application/json"]),
    ("content-length", ["2", "2"]),
])
def test_request_guard_refuses_a_repeated_content_type_or_length(name, values):
    """BentoML acts on the first Content-Type; a guard reading any other one could be slipped past
    (multipart first answered 500 from BentoML's multipart parser)."""
    answer = client((RequestGuard, {"max_bytes": 100})).post("/predict", content=b"{}",
                                                             headers=[(name, v) for v in values])
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"error": f"send one {name} header, not several", "reason": "repeated_header"}


@pytest.mark.parametrize("values", [["Bearer k", "Bearer wrong"], ["Bearer wrong", "Bearer k"], ["Bearer k"] * 2])
def test_api_key_refuses_a_repeated_authorization_header(values):
    keyed = client((ApiKeyAuth, {"api_key": "k"}))
    answer = keyed.post("/predict", headers=[("authorization", v) for v in values])
    assert answer.status_code == 400 and answer.json()["reason"] == "repeated_header"
    assert keyed.get("/livez", headers=[("authorization", v) for v in values]).status_code == 200  # probes stay open
