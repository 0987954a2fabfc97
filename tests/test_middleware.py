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
