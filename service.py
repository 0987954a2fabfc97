"""A runner-backed BentoML service for a scikit-learn model.

SklearnService (the entry point) validates and shapes requests, then calls
ModelRunner, which holds the model and batches calls adaptively. Settings come
from configuration.yaml; the model from the BentoML store (MODEL_TAG).
"""

from __future__ import annotations

import gc
import logging
import os
import time

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sklearn_service import config, model_check, open_inference, patches
from sklearn_service.coalescer import Coalescer
from sklearn_service.errors import RequestError, error_response, runner_failure
from sklearn_service.metrics import ServiceMetrics
from sklearn_service.middleware import ApiKeyAuth, RequestGuard
from sklearn_service.payload_log import PayloadLog
from sklearn_service.schemas import Prediction, Predictions, Probabilities, label_value, row_type
from sklearn_service.user_input import shown
from sklearn_service.validation import RowEncoder

patches.apply()
logger = logging.getLogger("sklearn_service")

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
SIGNATURE, MODEL_KIND = FACTS.signature, FACTS.model_kind  # validation, OpenAPI schema, metrics, payload log
Row = row_type(SIGNATURE)
RUNNER_BATCHING = config.batching("ModelRunner")
APP = config.app()


@bentoml.service(**config.service("ModelRunner"))
class ModelRunner:
    model_ref = MODEL  # declared on the class so `bentoml build` packs the model

    def __init__(self) -> None:
        # imported here so that only this process loads scikit-learn (~120 MB each)
        from sklearn_service.serving_model import ServingModel

        self.model = ServingModel(bentoml.sklearn.load_model(self.model_ref), SIGNATURE,
                                  compiled=APP["compiled_trees"], outputs=FACTS.outputs)
        gc.freeze()  # see SklearnService.__init__

    # async: the compiled path answers in microseconds, less than a hop to a worker thread (a batch
    # the model raises on is searched for its bad rows in one). Rows arrive encoded (see
    # signature.py); classifiers answer class indices.
    @bentoml.api(batchable=True, **RUNNER_BATCHING)
    async def predict(self, rows: np.ndarray) -> np.ndarray:
        return await self.model.serve_async("predict", rows)

    @bentoml.api(batchable=True, **RUNNER_BATCHING)
    async def predict_all(self, rows: np.ndarray) -> np.ndarray:
        """predict in column 0, then the model's other outputs (model_check.output_columns)."""
        return await self.model.serve_async("predict_all", rows)


async def metadata(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().metadata)


@bentoml.service(**config.service("SklearnService"))
@bentoml.asgi_app(Starlette(routes=[Route("/metadata", metadata)]), name="metadata")
@bentoml.asgi_app(open_inference.app, name="open_inference")  # the V2 protocol beside the API
class SklearnService:
    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        info = STORED.info
        meta = info.metadata
        self.schema = RowEncoder(SIGNATURE, reject_unseen=APP["unknown_categories"] == "reject")
        self.labels = None if SIGNATURE.classes is None else [label_value(c) for c in SIGNATURE.classes]
        self.label_keys = None if SIGNATURE.classes is None else [str(c) for c in SIGNATURE.classes]
        self.outputs = ("predict", *FACTS.outputs)
        self.columns = model_check.output_columns(FACTS.outputs, len(self.labels or ()))
        self.max_rows = int(APP["max_batch_rows"])
        self.runner_dead_seconds = float(APP["runner_dead_seconds"])
        self.metadata = {"tag": str(info.tag), "created": info.creation_time.isoformat(),
                         "task": SIGNATURE.task, "model_kind": MODEL_KIND, "outputs": list(self.outputs),
                         "feature_names": SIGNATURE.names, "classes": SIGNATURE.classes,
                         "input_schema": SIGNATURE.json_schema(), "signature": SIGNATURE.to_metadata(),
                         **{k: meta[k] for k in ("holdout_metrics", "versions", "training") if k in meta}}
        self.metrics = ServiceMetrics(str(info.tag), self.metadata["created"], SIGNATURE, MODEL_KIND,
                                      drift=APP["drift"])
        monitoring = config.service("SklearnService").get("monitoring", {})
        self.payload_log = PayloadLog(bool(monitoring.get("enabled")), SIGNATURE)
        limits = dict(max_rows=self.max_rows, max_waiting_rows=int(APP["max_queued_rows"]),
                      stall_after=float(APP["runner_stall_seconds"]))
        self._predict = Coalescer(self._runner_call("predict"), **limits)
        self._predict_all = Coalescer(self._runner_call("predict_all"), **limits)
        # Keep the ~170k start-up objects out of garbage collection: a full pass over
        # them would stall the event loop for ~85 ms.
        gc.freeze()

    def __is_alive__(self) -> bool:
        """/livez fails once the runner has been unreachable for app.runner_dead_seconds: inside
        a container BentoML does not restart a dead runner, so the orchestrator has to."""
        stalls = [c.stalled_since for c in (self._predict, self._predict_all) if c.stalled_since is not None]
        return not stalls or time.monotonic() - min(stalls) < self.runner_dead_seconds

    def _runner_call(self, method: str):
        # the runner's endpoints are looked up per call: its proxy is not set up during __init__
        async def call(rows: np.ndarray) -> np.ndarray:
            self.metrics.rows_per_call.observe(len(rows))
            return await getattr(self.runner.to_async, method)(rows)
        return call

    @bentoml.api
    async def predict(self, features: Row) -> Prediction:
        """One row, positional or by feature name: the seed's contract."""
        return await self._serve("/predict", 1, lambda: self.schema.single(features), self._predict,
                                 lambda out: Prediction(prediction=self._label(out[0])))

    @bentoml.api
    async def predict_batch(self, instances: list[Row]) -> Predictions:
        """Many rows in one request (at most app.max_batch_rows); order is kept."""
        return await self._serve("/predict_batch", len(instances), lambda: self.schema.matrix(instances, self.max_rows),
                                 self._predict, lambda out: Predictions(predictions=[self._label(v) for v in out]))

    @bentoml.api
    async def predict_proba(self, features: Row) -> Probabilities:
        """Class probabilities keyed by class label (classifiers only)."""
        def shape() -> np.ndarray:
            if self.labels is None:
                raise RequestError("not_a_classifier", f"this model's task is {SIGNATURE.task}, not "
                                                       "classification: it has no class probabilities")
            if "predict_proba" not in self.outputs:
                raise RequestError("no_probabilities", f"this {MODEL_KIND} classifier has no predict_proba: "
                                                       "use /predict for its labels")
            return self.schema.single(features)

        # the prediction is the model's predict, which need not be the most probable class
        return await self._serve("/predict_proba", 1, shape, self._predict_all,
                                 lambda out: Probabilities(prediction=self._label(out[0, 0]), probabilities=dict(
                                     zip(self.label_keys, out[0, self.columns["predict_proba"]].tolist()))))

    def _label(self, value: float):
        return value if self.labels is None else self.labels[int(value)]

    async def _serve(self, endpoint: str, row_count: int, shape, call, respond, error=error_response):
        """Validate, predict, record: the one path every prediction endpoint takes. `error`
        renders a refusal in the endpoint's protocol."""
        start = time.perf_counter()
        try:
            rows = shape()
        except RequestError as exc:
            self.metrics.reject(endpoint, exc.reason, row_count)
            return error(exc)
        try:
            out = await call(rows)
        except Exception as exc:  # the runner failed or is unreachable: never the client's fault
            self.metrics.error(endpoint, len(rows))
            return error(runner_failure(exc, logger))
        if np.isnan(out).any():  # rows the model raised on (see ServingModel): the request's own problem
            self.metrics.reject(endpoint, "model_refused_row", len(rows))
            failed = np.flatnonzero(np.isnan(out.reshape(len(rows), -1)).any(axis=1)).tolist()
            return error(RequestError("model_refused_row", f"the model could not predict instance(s) "
                                                           f"{failed[:10]}; see the server log", 422))
        predictions = out if out.ndim == 1 else out[:, 0]  # predict_all: predict is column 0
        self.metrics.success(endpoint, rows, predictions, time.perf_counter() - start)
        self.payload_log.write(endpoint, rows, predictions)
        return respond(out)


SklearnService.add_asgi_middleware(open_inference.HealthProbes)  # outermost: probes stay open
# in this order: the key is checked before any body is read
if api_key := os.environ.get("API_KEY") or APP["auth"]["api_key"]:
    SklearnService.add_asgi_middleware(ApiKeyAuth, api_key=api_key, protect_metrics=bool(APP["auth"]["protect_metrics"]))
SklearnService.add_asgi_middleware(RequestGuard, max_bytes=int(APP["max_body_bytes"]),
                                   body_seconds=float(APP["client_timeout_seconds"]))
