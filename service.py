"""A runner-backed BentoML service for a scikit-learn model.

SklearnService (the entry point) validates and shapes requests, then calls
ModelRunner, which holds the model and batches calls adaptively. Settings come
from configuration.yaml; the model from the BentoML store (MODEL_TAG).
"""

from __future__ import annotations

import gc
import os

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sklearn_service import bentoml_fixes, config
from sklearn_service.coalescer import Coalescer
from sklearn_service.schemas import Prediction, Predictions, Probabilities, Row
from sklearn_service.validation import FeatureSchema, RequestError

bentoml_fixes.apply()

MODEL = bentoml.models.BentoModel(os.environ.get("MODEL_TAG", "sklearn_model:latest"))
RUNNER_BATCHING = config.batching("ModelRunner")


@bentoml.service(**config.service("ModelRunner"))
class ModelRunner:
    model_ref = MODEL  # declared on the class so `bentoml build` packs the model

    def __init__(self) -> None:
        # imported here so that only this process loads scikit-learn (~120 MB each)
        from sklearn_service.serving_model import ServingModel, probe_rows

        pipeline = bentoml.sklearn.load_model(self.model_ref)
        self.model = ServingModel(pipeline, compiled=config.app().get("compiled_trees", True),
                                  probe=probe_rows(self.model_ref.info.metadata["feature_stats"]))
        gc.freeze()  # see SklearnService.__init__

    # async: the compiled path answers in microseconds, less than a hop to a worker thread
    @bentoml.api(batchable=True, **RUNNER_BATCHING)
    async def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict(rows).astype(np.float64)

    @bentoml.api(batchable=True, **RUNNER_BATCHING)
    async def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(rows)


async def metadata(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().metadata)


@bentoml.service(**config.service("SklearnService"))
@bentoml.asgi_app(Starlette(routes=[Route("/metadata", metadata)]), name="metadata")
class SklearnService:
    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        info = MODEL.stored.info
        self.meta = info.metadata
        self.schema = FeatureSchema(self.meta["feature_names"])
        self.classes = self.meta.get("class_names")
        self.max_rows = int(config.app().get("max_batch_rows", 1000))
        self.metadata = {"tag": str(info.tag), "created": info.creation_time.isoformat(),
                         "task": self.meta["task"], "model_kind": self.meta["model_kind"],
                         "feature_names": self.schema.names, "class_names": self.classes,
                         "holdout_metrics": self.meta["holdout_metrics"],
                         "versions": self.meta["versions"], "training": self.meta["training"]}
        # runner endpoints resolve on first use: the proxy is not set up during __init__
        self._predict = Coalescer(lambda rows: self.runner.to_async.predict(rows), self.max_rows)
        self._predict_proba = Coalescer(lambda rows: self.runner.to_async.predict_proba(rows), self.max_rows)
        # Keep the ~170k start-up objects out of garbage collection: a full pass over
        # them stalls the event loop ~85 ms, which was the whole latency tail.
        gc.freeze()

    @bentoml.api
    async def predict(self, features: Row) -> Prediction:
        """One row, positional or by feature name: the seed's contract."""
        try:
            rows = self.schema.single(features)
        except RequestError as exc:
            return error_response(exc)
        return Prediction(prediction=float((await self._predict(rows))[0]))

    @bentoml.api
    async def predict_batch(self, instances: list[Row]) -> Predictions:
        """Many rows in one request (at most app.max_batch_rows); order is kept."""
        try:
            rows = self.schema.matrix(instances, self.max_rows)
        except RequestError as exc:
            return error_response(exc)
        return Predictions(predictions=(await self._predict(rows)).tolist())

    @bentoml.api
    async def predict_proba(self, features: Row) -> Probabilities:
        """Class probabilities keyed by class name (classifiers only)."""
        try:
            if self.classes is None:
                raise RequestError("not_a_classifier", "this model is a regressor: it has no class probabilities")
            rows = self.schema.single(features)
        except RequestError as exc:
            return error_response(exc)
        proba = (await self._predict_proba(rows))[0]
        return Probabilities(prediction=float(np.argmax(proba)),
                             probabilities=dict(zip(self.classes, proba.tolist())))


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "reason": exc.reason}, status_code=exc.status)
