"""REVIEW: failing tests found by a hostile review (each fails on main at 9c0f9ca; not fixes)."""

from __future__ import annotations


import numpy as np
import pytest

from sklearn_service.training import DataError, read_csv


def test_review_request_guard_sees_the_content_type_bentoml_reads():
    # BentoML (Starlette's request.headers.get) reads the FIRST Content-Type; RequestGuard's
    # dict(scope["headers"]) reads the LAST. Live: `multipart/form-data` then `application/json`
    # on POST /predict answers 500 (KeyError b'boundary' in BentoML's multipart parser).
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from sklearn_service.middleware import RequestGuard

    async def seen(request: Request) -> JSONResponse:
        return JSONResponse({"content_type": request.headers.get("content-type")})

    app = Starlette(routes=[Route("/predict", seen, methods=["POST"])])
    app.add_middleware(RequestGuard, max_bytes=100)
    answer = TestClient(app).post("/predict", content=b"{}", headers=[("content-type", "multipart/form-data"),
                                                                       ("content-type", "application/json")])
    assert answer.status_code == 415, answer.json()
