"""The classic routes for any served model: /models/{name}/predict, ... and GET /models.

Each route's answer is one function of the model's PredictionCore and the parsed body:
service.py's APIs answer them for the default model (/predict, ...), this module's
app for the model the path names. A per-model route takes the same body as the
classic one, validated by the classic API's own input type (so the same errors,
pydantic's in `detail`), and answers the same body.

`app` serves them: plain Starlette, whose dispatch costs a fraction of FastAPI's
(its middleware stack was a quarter of an API worker's CPU per request). `docs`
documents them: a FastAPI app, whose OpenAPI BentoML merges into /docs.json, with
paths of their own for each model configured at start-up, typed from its signature
(a model loaded later is documented by the `{name}` paths). Mounted after `app`,
it answers only what `app` does not (nothing), with the same handlers.
"""

from __future__ import annotations

import typing as t

import bentoml
import numpy as np
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sklearn_service.errors import RequestError, error_response
from sklearn_service.prediction_core import EXPLANATION, Answer, PredictionCore
from sklearn_service.schemas import ExplainedPrediction, ExplainedPredictions, Prediction, Predictions, Probabilities
from sklearn_service.signature import Signature


async def predict(core: PredictionCore, features) -> Prediction:
    """One row, positional or by feature name: the seed's contract."""
    answer = await core.answer("/predict", [features], one_row=True)
    return Prediction(prediction=answer.predictions[0])


async def predict_batch(core: PredictionCore, instances) -> Predictions:
    answer = await core.answer("/predict_batch", instances)
    return Predictions(predictions=answer.predictions)


async def predict_proba(core: PredictionCore, features) -> Probabilities:
    # the prediction is the model's predict, which need not be the most probable class
    answer = await core.answer("/predict_proba", [features], outputs=("predict", "predict_proba"), one_row=True)
    return Probabilities(prediction=answer.predictions[0], probabilities=dict(
        zip(core.label_keys or (), answer.outputs["predict_proba"][0].tolist())))


async def explain(core: PredictionCore, features, explained_class=None, top: int | None = None) -> ExplainedPrediction:
    answer = await core.answer("/explain", [features], outputs=("predict", EXPLANATION), one_row=True,
                               explained_class=explained_class)
    return explained(answer, core.signature.names, top)[0]


async def explain_batch(core: PredictionCore, instances, explained_class=None,
                        top: int | None = None) -> ExplainedPredictions:
    answer = await core.answer("/explain_batch", instances, outputs=("predict", EXPLANATION),
                               explained_class=explained_class)
    return ExplainedPredictions(explanations=explained(answer, core.signature.names, top))


def explained(answer: Answer, names: list[str], top: int | None) -> list[ExplainedPrediction]:
    """Each row's explanation, its contributions largest first (at most `top` of them; `rest` adds up the others)."""
    e, contributions = answer.explained, answer.outputs[EXPLANATION]
    assert e is not None
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")
    bodies = []
    for i, prediction in enumerate(answer.predictions):
        row, kept = contributions[i], order[i, :top]
        bodies.append(ExplainedPrediction(
            prediction=prediction, output=e.output, explained_class=None if e.classes is None else e.classes[i],
            value=float(e.values[i]), base_value=float(e.base_values[i]),
            contributions={names[j]: float(row[j]) for j in kept.tolist()},
            rest=float(row[order[i, len(kept):]].sum())))
    return bodies


ROUTES: dict[str, t.Callable[..., t.Awaitable[t.Any]]] = {
    "predict": predict, "predict_batch": predict_batch, "predict_proba": predict_proba,
    "explain": explain, "explain_batch": explain_batch}


def _service():
    return bentoml.get_current_service()


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"models": _service().models.listing()})


# the path parameters are arguments so that the OpenAPI document declares them
async def model_metadata(name: str) -> JSONResponse:
    core = _service().models.get(name)
    if core is None:
        return error_response(_service().models.missing(name))
    return JSONResponse(core.metadata)


async def answer(request: Request, name: str | None = None, route: str | None = None) -> Response:
    """POST /models/{name}/{route}: the classic route's answer for that model."""
    service = _service()
    name = request.path_params["name"] if name is None else name
    route = request.path_params["route"] if route is None else route
    if route not in ROUTES:
        return error_response(RequestError("unknown_route", f"no route {route[:60]!r} of a model; routes: "
                                                            f"{', '.join(ROUTES)}, metadata", 404))
    core = service.models.get(name)
    if core is None:
        return error_response(service.models.missing(name))
    try:
        body = service.inputs[route].model_validate_json(await request.body())
    except ValidationError as exc:  # as BentoML answers it on the classic route
        return JSONResponse({"error": f"{exc.error_count()} validation error for {exc.title}",
                             "detail": exc.errors(include_context=False, include_input=False)}, status_code=400)
    try:
        result = await ROUTES[route](core, **dict(body))
    except RequestError as exc:
        return error_response(exc)
    return Response(result.model_dump_json(), media_type="application/json")


async def _metadata(request: Request) -> JSONResponse:
    return await model_metadata(request.path_params["name"])


app = Starlette(routes=[
    Route("/models", list_models),
    Route("/models/{name}/metadata", _metadata),
    Route("/models/{name}/{route}", answer, methods=["POST"]),
])


def docs(configured: dict[str, Signature]) -> FastAPI:
    """The routes' OpenAPI; `configured`: the models served at start-up, by name, each with its own paths."""
    api = FastAPI(title="Models", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_api_route("/models", list_models, methods=["GET"], summary="The served models", tags=["Models"])
    for name, signature in configured.items():
        for route in ROUTES:
            api.add_api_route(f"/models/{name}/{route}", _bound(name, route), methods=["POST"], tags=["Models"],
                              summary=f"/{route} of model {name}", openapi_extra=_documented(route, signature))
    api.add_api_route("/models/{name}/metadata", model_metadata, methods=["GET"], tags=["Models"],
                      summary="A served model's metadata")
    api.add_api_route("/models/{name}/{route}", answer, methods=["POST"], tags=["Models"],
                      summary="A classic route (predict, predict_batch, predict_proba, explain, explain_batch) of "
                              "any served model, with the same body and answer as the route itself")
    return api


def _bound(name: str, route: str):
    async def endpoint(request: Request) -> Response:
        return await answer(request, name, route)
    return endpoint


def _documented(route: str, signature: Signature) -> dict:
    """The request body of one of a model's routes, typed from its signature, for OpenAPI."""
    row = signature.json_schema()
    if route.endswith("_batch"):
        properties: dict[str, t.Any] = {"instances": {"type": "array", "items": row, "minItems": 1}}
    else:
        properties = {"features": row}
    if route.startswith("explain"):
        properties["explained_class"] = {"description": "the class whose output is explained (default: the "
                                                        "predicted one)"}
        properties["top"] = {"type": "integer", "minimum": 1, "description": "only the largest contributions"}
    required = ["instances" if route.endswith("_batch") else "features"]
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
