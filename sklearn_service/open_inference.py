"""The Open Inference Protocol ("V2" of KServe, Triton and Seldon MLServer) over REST, beside the API.

A thin adapter: the wire format is v2_codec's; each infer request takes the
model's PredictionCore, as the API's own routes do (the same per-feature errors,
coalescing, limits and metrics). Errors answer in the protocol's form, {"error": ...}.
The health probes (/v2/health/*) are middleware (see middleware.HealthProbes).

An explainable model has one more output, "explanation" ([N, F]: each feature's
contribution to the explained output, see prediction_core.Explained): listed in
its metadata, answered only when named in `outputs`, so that a client naming no
output (all of them, in the protocol) pays for no explanation it did not ask for.
"""

from __future__ import annotations

import json

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sklearn_service import v2_codec
from sklearn_service.errors import RequestError
from sklearn_service.prediction_core import EXPLANATION, PredictionCore

ENDPOINT = "/v2/infer"  # the metrics label of every V2 inference request


def protocol_error(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)


def _model(request: Request) -> PredictionCore | None:
    """The model the path names (and its version), None when it is not served here."""
    asked = request.path_params
    return bentoml.get_current_service().model(asked["name"], asked.get("version"))


def unknown_model(name: str, version: str | None) -> RequestError:
    """The 404 for a model not served: why, and which models are."""
    return bentoml.get_current_service().models.missing(name, version)


def _unknown_model(request: Request) -> JSONResponse:
    asked = request.path_params
    return protocol_error(unknown_model(asked["name"], asked.get("version")))


async def server_metadata(request: Request) -> JSONResponse:
    return JSONResponse({"name": "sklearn-service", "version": bentoml.__version__,
                         "extensions": ["binary_tensor_data", "model_repository"]})


async def model_metadata(request: Request) -> JSONResponse:
    core = _model(request)
    if core is None:
        return _unknown_model(request)
    return JSONResponse({"name": core.name, "versions": [core.version], "platform": "scikit-learn",
                         "inputs": v2_codec.model_inputs(core.signature),
                         "outputs": model_outputs(core)})


def model_outputs(core: PredictionCore) -> list[dict]:
    """The model's V2 outputs (over REST and gRPC): its own, and `explanation` when it can be explained
    (answered only when named: see v2_codec.requested_outputs)."""
    outputs = (*core.outputs, EXPLANATION) if core.explained_output else core.outputs
    return v2_codec.model_outputs(outputs, core.labels, len(core.signature.names))


async def model_ready(request: Request) -> Response:
    core = _model(request)
    if core is None:
        return _unknown_model(request)
    ready = await runner_ready(bentoml.get_current_service().runner)
    return JSONResponse({"name": core.name, "ready": ready}, status_code=200 if ready else 503)


async def runner_ready(runner) -> bool:
    is_ready = getattr(runner, "is_ready", None)  # a runner in its own process: ask it, as /readyz does
    try:
        return is_ready is None or await is_ready(5)
    except Exception:  # unreachable (restarting): not ready
        return False


async def infer(request: Request) -> Response:
    core = _model(request)
    if core is None:
        return _unknown_model(request)
    headers, body = request.headers, await request.body()
    try:
        try:
            inference = v2_codec.decode_request(headers, body, core.outputs, named_only=(EXPLANATION,))
            rows = v2_codec.rows(inference, core.signature)
        except RequestError as exc:
            raise core.refuse(ENDPOINT, exc, v2_codec.received_rows(headers, body)) from None
        answer = await core.answer(ENDPOINT, rows, outputs=inference.outputs)
    except RequestError as exc:
        return protocol_error(exc)
    tensors = v2_codec.output_tensors(inference.outputs, answer.predictions, answer.outputs, core.labels)
    content, answer_headers = v2_codec.encode_response(core.name, core.version, inference.id, tensors)
    return Response(content, headers=answer_headers)


# ---- the model repository extension (as Triton and MLServer have it) -----------------------------

async def _body(request: Request) -> dict:
    """The optional JSON object a repository call takes, or RequestError."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise RequestError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("invalid_request", "the body must be a JSON object")
    return body


async def repository_index(request: Request) -> JSONResponse:
    """Every model in the store, each version READY (served) or UNAVAILABLE with the reason;
    {"ready": true}: only the served ones."""
    try:
        ready = (await _body(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise RequestError("invalid_request", "'ready' must be true or false")
    except RequestError as exc:
        return protocol_error(exc)
    return JSONResponse(bentoml.get_current_service().models.index(ready_only=ready))


async def repository_load(request: Request) -> JSONResponse:
    """Serves {name}:latest, or the version in {"parameters": {"version": "..."}}, taking over from the
    version served now once it has answered its example row."""
    name = request.path_params["name"]
    try:
        parameters = (await _body(request)).get("parameters") or {}
        version = parameters.get("version") if isinstance(parameters, dict) else None
        if not isinstance(parameters, dict) or not isinstance(version, (str, type(None))):
            raise RequestError("invalid_request", "'parameters' must be an object; its 'version' a string")
        core = await bentoml.get_current_service().models.load(name, version)
    except RequestError as exc:
        return protocol_error(exc)
    return JSONResponse({"name": core.name, "version": core.version, "state": "READY"})


async def repository_unload(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    try:
        await _body(request)
        await bentoml.get_current_service().models.unload(name)
    except RequestError as exc:
        return protocol_error(exc)
    return JSONResponse({"name": name, "state": "UNAVAILABLE"})


MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
app = Starlette(routes=[
    Route("/v2", server_metadata),
    *[Route(path, model_metadata) for path in (MODEL, VERSION)],
    *[Route(path + "/ready", model_ready) for path in (MODEL, VERSION)],
    *[Route(path + "/infer", infer, methods=["POST"]) for path in (MODEL, VERSION)],
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
    Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
])
