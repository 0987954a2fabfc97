"""A runner-backed BentoML service for a scikit-learn model.

SklearnService (the entry point) validates and shapes requests, then calls
ModelRunner, which holds the model and batches calls adaptively. Settings come
from configuration.yaml; the model from the BentoML store (MODEL_TAG).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import typing as t

import bentoml
import numpy as np
from pydantic import Field, StrictInt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sklearn_service import config, grpc_lifecycle, model_check, open_inference, patches
from sklearn_service.errors import RequestError, error_response
from sklearn_service.middleware import ApiKeyAuth, HealthProbes, RequestGuard, configured_api_key
from sklearn_service.prediction_core import EXPLAIN_ROWS_PER_CALL, EXPLANATION, Answer, PredictionCore
from sklearn_service.schemas import ExplainedPrediction, ExplainedPredictions, JsonArray, Prediction, Predictions
from sklearn_service.schemas import Probabilities, Value, row_type
from sklearn_service.user_input import shown

patches.apply()

MODEL_TAG = os.environ.get("MODEL_TAG", "sklearn_model:latest")
try:  # the tag, the model loads, what it is and answers (see model_check): checked before anything starts
    try:
        MODEL = bentoml.models.BentoModel(MODEL_TAG)
    except (ValueError, bentoml.exceptions.BentoMLException):
        raise model_check.ModelError(f"MODEL_TAG {shown(MODEL_TAG)} is not a model tag: name or name:version, "
                                     "each letters, digits, '_', '-' or '.'") from None
    STORED, FACTS = model_check.facts(MODEL)
except model_check.ModelError as exc:
    raise SystemExit(f"error: {exc}") from None
SIGNATURE = FACTS.signature  # validation, OpenAPI schema, metrics, payload log
Row = row_type(SIGNATURE)
RUNNER_BATCHING = config.batching("ModelRunner")
# explaining costs far more per row than predicting: smaller batches keep each call short
EXPLAIN_BATCHING = {**RUNNER_BATCHING,
                    "max_batch_size": min(EXPLAIN_ROWS_PER_CALL, RUNNER_BATCHING.get("max_batch_size", 10**9))}
EXPLAIN_INLINE_ROWS = 2  # explained on the runner's event loop; more go to a worker thread
APP = config.app()
Top = t.Annotated[StrictInt, Field(ge=1)]  # how many contributions /explain lists (true is not a number)


@bentoml.service(**config.service("ModelRunner"))
class ModelRunner:
    model_ref = MODEL  # declared on the class so `bentoml build` packs the model

    def __init__(self) -> None:
        # imported here so that only this process loads scikit-learn (~120 MB each)
        from sklearn_service.explain import for_stored_model
        from sklearn_service.serving_model import ServingModel

        pipeline = bentoml.sklearn.load_model(self.model_ref)
        # the start-up check found whether it can be built (model_check.explainability); the API refuses otherwise
        explainer = for_stored_model(pipeline, SIGNATURE, STORED.path) if FACTS.explained_output else None
        self.model = ServingModel(pipeline, SIGNATURE, compiled=APP["compiled_trees"], outputs=FACTS.outputs,
                                  explainer=explainer)
        gc.freeze()  # see SklearnService.__init__

    # async: the compiled path answers in microseconds, less than a hop to a worker thread (a batch
    # the model raises on is searched for its bad rows in one). Rows arrive encoded (see
    # category_codes.py); classifiers answer class indices.
    @bentoml.api(batchable=True, **RUNNER_BATCHING)
    async def predict(self, rows: np.ndarray) -> JsonArray:
        return await self.model.serve_async("predict", rows)

    @bentoml.api(batchable=True, **RUNNER_BATCHING)
    async def predict_all(self, rows: np.ndarray) -> JsonArray:
        """predict in column 0, then the model's other outputs (model_check.output_columns)."""
        return await self.model.serve_async("predict_all", rows)

    @bentoml.api(batchable=True, **EXPLAIN_BATCHING)
    async def explain(self, rows: np.ndarray) -> JsonArray:
        """predict_all's columns, then each row's explanation (ServingModel.explain); the rows' last
        column is the class to explain. At ~1 ms a row (a forest of 100 trees), a batch goes to a worker
        thread, so that predictions need not wait for it; a row or two is answered sooner than a hop there."""
        if len(rows) <= EXPLAIN_INLINE_ROWS:
            return self.model.explain(rows)
        return await asyncio.to_thread(self.model.explain, rows)


async def metadata(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().metadata)


@bentoml.service(**config.service("SklearnService"))
@bentoml.asgi_app(Starlette(routes=[Route("/metadata", metadata)]), name="metadata")
@bentoml.asgi_app(open_inference.app, name="open_inference")  # the V2 protocol beside the API
class SklearnService:
    """The API: each route parses its form of request, and the model's PredictionCore validates,
    predicts and records (see prediction_core.py); V2 takes the same core (open_inference.py)."""

    runner = bentoml.depends(ModelRunner)
    start_grpc, stop_grpc = grpc_lifecycle.hooks(APP)  # V2 over gRPC too: a server per worker, on app.grpc.port

    def __init__(self) -> None:
        monitoring = config.service("SklearnService").get("monitoring", {})
        self.core = PredictionCore(STORED.info, SIGNATURE, FACTS, self._call_runner, APP, monitoring)
        self.metadata = self.core.metadata
        self.runner_dead_seconds = float(APP["runner_dead_seconds"])
        # Keep the ~170k start-up objects out of garbage collection: a full pass over
        # them would stall the event loop for ~85 ms.
        gc.freeze()

    async def _call_runner(self, method: str, rows: np.ndarray) -> np.ndarray:
        # looked up per call: the runner's proxy is not set up during __init__
        return await getattr(self.runner.to_async, method)(rows)

    def model(self, name: str, version: str | None = None) -> PredictionCore | None:
        """The served model by name (and version, if given), or None."""
        core = self.core
        return core if name == core.name and version in (None, core.version) else None

    def __is_alive__(self) -> bool:
        """/livez fails once the runner has been unreachable for app.runner_dead_seconds: inside
        a container BentoML does not restart a dead runner, so the orchestrator has to."""
        stalled = self.core.stalled_since
        return stalled is None or time.monotonic() - stalled < self.runner_dead_seconds

    @bentoml.api
    async def predict(self, features: Row) -> Prediction:
        """One row, positional or by feature name: the seed's contract."""
        try:
            answer = await self.core.answer("/predict", [features], one_row=True)
        except RequestError as exc:
            return error_response(exc)
        return Prediction(prediction=answer.predictions[0])

    @bentoml.api
    async def predict_batch(self, instances: list[Row]) -> Predictions:
        """Many rows in one request (at most app.max_batch_rows); order is kept."""
        try:
            answer = await self.core.answer("/predict_batch", instances)
        except RequestError as exc:
            return error_response(exc)
        return Predictions(predictions=answer.predictions)

    @bentoml.api
    async def predict_proba(self, features: Row) -> Probabilities:
        """Class probabilities keyed by class label (classifiers only)."""
        # the prediction is the model's predict, which need not be the most probable class
        try:
            answer = await self.core.answer("/predict_proba", [features], outputs=("predict", "predict_proba"),
                                            one_row=True)
        except RequestError as exc:
            return error_response(exc)
        return Probabilities(prediction=answer.predictions[0], probabilities=dict(
            zip(self.core.label_keys, answer.outputs["predict_proba"][0].tolist())))

    @bentoml.api
    async def explain(self, features: Row, explained_class: Value = None,
                      top: Top | None = None) -> ExplainedPrediction:
        """One row's prediction and why: what each feature adds to the model's output (README
        "Explanations"). explained_class: the class whose output is explained (default: the
        predicted one); top: only the largest contributions."""
        try:
            answer = await self.core.answer("/explain", [features], outputs=("predict", EXPLANATION), one_row=True,
                                            explained_class=explained_class)
        except RequestError as exc:
            return error_response(exc)
        return explained(answer, SIGNATURE.names, top)[0]

    @bentoml.api
    async def explain_batch(self, instances: list[Row], explained_class: Value = None,
                            top: Top | None = None) -> ExplainedPredictions:
        """/explain for many rows (at most app.max_batch_rows); order is kept."""
        try:
            answer = await self.core.answer("/explain_batch", instances, outputs=("predict", EXPLANATION),
                                            explained_class=explained_class)
        except RequestError as exc:
            return error_response(exc)
        return ExplainedPredictions(explanations=explained(answer, SIGNATURE.names, top))


def explained(answer: Answer, names: list[str], top: int | None) -> list[ExplainedPrediction]:
    """Each row's explanation, its contributions largest first (at most `top` of them; `rest` adds up the others)."""
    e, contributions = answer.explained, answer.outputs[EXPLANATION]
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


SklearnService.add_asgi_middleware(HealthProbes)  # outermost: probes stay open
# in this order: the key is checked before any body is read
if api_key := configured_api_key(APP):
    SklearnService.add_asgi_middleware(ApiKeyAuth, api_key=api_key,
                                       protect_metrics=bool(APP["auth"]["protect_metrics"]))
SklearnService.add_asgi_middleware(RequestGuard, max_bytes=int(APP["max_body_bytes"]),
                                   body_seconds=float(APP["client_timeout_seconds"]))
