"""ASGI middleware of the API service: request limits, optional API key (and where it is set), the V2 health probes."""

from __future__ import annotations

import asyncio
import hmac
import os

from starlette.responses import JSONResponse

# Health probes and the docs page stay reachable without a key.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/", "/docs.json"})
OPEN_PREFIXES = ("/static_content/",)


# Every endpoint takes JSON. These would reach BentoML's pickle (refused, with a malformed
# error body) or multipart parser (a missing boundary made it answer 500).
REFUSED_TYPES = (b"application/vnd.bentoml+pickle", b"multipart/", b"application/x-www-form-urlencoded")


def configured_api_key(app: dict) -> str | None:
    """The API key every protocol asks for: API_KEY in the environment, else app.auth.api_key; None: no auth."""
    return os.environ.get("API_KEY") or app["auth"]["api_key"]


class RepeatedHeader(Exception):
    pass


def single_header(scope, name: bytes) -> bytes | None:
    """The one value of header `name` (lowercase), or None when absent. Sent twice it is refused:
    Starlette and BentoML read the first, a dict of the headers the last, so a check on one value
    while the endpoint reads another could be slipped past."""
    values = [value for key, value in scope["headers"] if key == name]
    if len(values) > 1:
        raise RepeatedHeader(name.decode())
    return values[0] if values else None


def repeated_header(name: str) -> JSONResponse:
    return JSONResponse({"error": f"send one {name} header, not several", "reason": "repeated_header"},
                        status_code=400)


class RequestGuard:
    """Refuses, before anything parses them: a repeated Content-Type or Content-Length (400), bodies
    over `max_bytes` (413, declared or streamed), pickled, multipart or form bodies (415), and bodies not fully received
    within `body_seconds` of the headers (408: a slow or stalled client, such as one that
    declared a Content-Length and never sent it)."""

    def __init__(self, app, max_bytes: int, body_seconds: float = 10):
        self.app = app
        self.max_bytes = max_bytes
        self.body_seconds = body_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            content_type, declared = single_header(scope, b"content-type"), single_header(scope, b"content-length")
        except RepeatedHeader as exc:
            return await repeated_header(str(exc))(scope, receive, send)
        if (content_type or b"").strip().lower().startswith(REFUSED_TYPES):
            response = JSONResponse({"error": "send a JSON body with Content-Type: application/json",
                                     "reason": "unsupported_media_type"}, status_code=415)
            return await response(scope, receive, send)
        # bytes.isdigit() is ASCII-only; the length bound keeps int() off thousand-digit values
        if declared is not None and (not declared.isdigit() or len(declared) > 19 or int(declared) > self.max_bytes):
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_seconds):  # for the whole body, not per chunk
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # client went away
                    size += len(message.get("body", b""))
                    if size > self.max_bytes:
                        break
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            response = JSONResponse({"error": f"request body not received within {self.body_seconds:g} s",
                                     "reason": "request_timeout"}, status_code=408, headers={"Connection": "close"})
            return await response(scope, receive, send)
        if size > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = JSONResponse({"error": f"request body larger than {self.max_bytes} bytes",
                                 "reason": "body_too_large"}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every path but health probes, docs and (optionally) /metrics.
    The scheme name is case-insensitive (RFC 9110). Added before RequestGuard, so it runs first:
    an unauthenticated client is refused before any of its body is read."""

    def __init__(self, app, api_key: str, protect_metrics: bool = False):
        self.app = app
        self.expected = api_key.encode()
        self.open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        try:
            scheme, _, given = (single_header(scope, b"authorization") or b"").strip().partition(b" ")
        except RepeatedHeader as exc:
            return await repeated_header(str(exc))(scope, receive, send)
        # compared in constant time: no timing hints about the key
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected):
            return await self.app(scope, receive, send)
        response = JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                 "reason": "unauthorized"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="sklearn-service"'})
        await response(scope, receive, send)


class HealthProbes:
    """/v2/health/live and /v2/health/ready (the Open Inference Protocol's probes) answer as the
    service's own /livez and /readyz (runner alive, runner ready) do, and like them open without an
    API key; the body is the protocol's {"live": true} / {"ready": true} (KServe's client reads it;
    Triton's reads the status)."""

    ALIASES = {"/v2/health/live": ("/livez", "live"), "/v2/health/ready": ("/readyz", "ready")}
    ROUTES = tuple(ALIASES)  # paths it serves, for the endpoint label of BentoML's metrics

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.ALIASES:
            return await self.app(scope, receive, send)
        path, key = self.ALIASES[scope["path"]]
        status = 503

        async def keep_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app({**scope, "path": path, "raw_path": path.encode()}, receive, keep_status)
        await JSONResponse({key: status == 200}, status_code=status)(scope, receive, send)
