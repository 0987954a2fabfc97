"""A runner-backed BentoML service for scikit-learn models.

SklearnService (the entry point) validates and shapes requests, then calls
ModelRunner, which holds the models and batches calls adaptively. Settings come
from configuration.yaml; the models from the BentoML store (MODELS, else MODEL_TAG:
served_models.py), one of them the default that answers the classic routes.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
import typing as t

import bentoml
import numpy as np
from pydantic import Field, StrictInt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sklearn_service import config, grpc_lifecycle, model_check, model_routes, open_inference, patches, served_models
from sklearn_service.coalescer import RunnerHop
from sklearn_service.errors import RequestError, error_response
from sklearn_service.log_limit import limited
from sklearn_service.middleware import ApiKeyAuth, HealthProbes, RequestGuard, configured_api_key
from sklearn_service.prediction_core import EXPLAIN_ROWS_PER_CALL, PredictionCore
from sklearn_service.schemas import ExplainedPrediction, ExplainedPredictions, JsonArray, Prediction, Predictions
from sklearn_service.schemas import Probabilities, Value, row_type

patches.apply()
logger = logging.getLogger("sklearn_service")

APP = config.app()
# The models (served_models.py): MODELS or app.models, else MODEL_TAG; each checked before anything
# starts (see model_check), once per server. The default model answers the classic routes; as
# configured at start-up ("boot"), it is also served through the runner's batchable APIs.
STATE = served_models.StateFolder.for_this_server()
try:
    STARTING, DEFAULT = served_models.starting_models(APP)
    STATE.start(STARTING, DEFAULT)
except model_check.ModelError as exc:
    raise SystemExit(f"error: {exc}") from None
BOOT = next(m for m in STARTING if m.tag.name == DEFAULT)
SIGNATURE = STATE.facts(BOOT).signature  # the classic routes' OpenAPI schema
Row = row_type(SIGNATURE)
RUNNER_BATCHING = config.batching("ModelRunner")
# explaining costs far more per row than predicting: smaller batches keep each call short
EXPLAIN_BATCHING = {**RUNNER_BATCHING,
                    "max_batch_size": min(EXPLAIN_ROWS_PER_CALL, RUNNER_BATCHING.get("max_batch_size", 10**9))}
EXPLAIN_INLINE_ROWS = 2  # explained on the runner's event loop; more go to a worker thread
REPLACED_IDLE_SECONDS = 60  # a runner keeps a replaced version this long after its last call
FAILED_CALL = np.empty(0)   # infer's answer for a model's call that raised (coalescer.RunnerHop)
Top = t.Annotated[StrictInt, Field(ge=1)]  # how many contributions /explain lists (true is not a number)


@bentoml.service(**config.service("ModelRunner"))
class ModelRunner:
    """Holds the models: the boot model behind the batchable APIs, any served version behind `infer`."""

    model_ref = bentoml.models.BentoModel(str(BOOT.tag))  # declared on the class so `bentoml build` packs it

    def __init__(self) -> None:
        self.models: dict[str, t.Any] = {}    # tag -> ServingModel
        self._loading: dict[str, asyncio.Lock] = {}
        self._used: dict[str, float] = {}     # tag -> when last called, for pruning replaced versions
        self._record = served_models.RecordWatch(STATE)
        self.model = self._load(str(BOOT.tag))
        for tag in set(self._record.current()[0].models.values()) - set(self.models):  # ready means every one
            try:
                self._load(tag)
            except Exception:  # e.g. removed from the store: the others serve, this one is tried on its call
                logger.exception("cannot load %s", tag)
        gc.freeze()  # see SklearnService.__init__

    def _load(self, tag: str):
        # imported here so that only this process loads scikit-learn (~120 MB each)
        from sklearn_service.explain import for_stored_model
        from sklearn_service.serving_model import ServingModel

        stored = bentoml.models.get(tag)
        facts = STATE.facts(stored)
        pipeline = bentoml.sklearn.load_model(stored)
        # the model check found whether it can be built (model_check.explainability); the API refuses otherwise
        explainer = functools.partial(for_stored_model, pipeline, facts.signature, stored.path) \
            if facts.explained_output else None
        self.models[tag] = ServingModel(pipeline, facts.signature, compiled=APP["compiled_trees"],
                                        outputs=facts.outputs, explainer=explainer)
        self._used[tag] = time.monotonic()
        return self.models[tag]

    async def _model(self, tag: str):
        """The ServingModel of a version, loaded (off the event loop) on its first call here."""
        model = self.models.get(tag)
        if model is None:
            async with self._loading.setdefault(tag, asyncio.Lock()):
                model = self.models.get(tag) or await asyncio.to_thread(self._load, tag)
            self._prune()
        return model

    async def _preload(self, tag: str) -> None:
        try:
            await self._model(tag)
        except Exception:  # its first call tries again, and fails alone
            logger.exception("cannot load %s", tag)

    def _prune(self) -> None:
        """Drops versions no longer served (replaced or unloaded) once idle for a while."""
        served = set(self._record.current()[0].models.values()) | {str(BOOT.tag)}
        idle = time.monotonic() - REPLACED_IDLE_SECONDS
        for tag in [tag for tag in self.models if tag not in served and self._used.get(tag, 0) < idle]:
            del self.models[tag]

    async def _serve(self, model, method: str, rows: np.ndarray) -> np.ndarray:
        if method != "explain":
            return await model.serve_async(method, rows)
        # At ~1 ms a row (a forest of 100 trees), a batch goes to a worker thread, so that predictions
        # need not wait for it; a row or two is answered sooner than a hop there.
        if len(rows) <= EXPLAIN_INLINE_ROWS:
            return model.explain(rows)
        return await asyncio.to_thread(model.explain, rows)

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
        column is the class to explain."""
        return await self._serve(self.model, "explain", rows)

    @bentoml.api
    async def infer(self, tags: list[str], methods: list[str], blocks: list[np.ndarray]) -> list[np.ndarray]:
        """Runner methods (predict, predict_all, explain) of any stored versions, one call per model:
        blocks[i] answered by tags[i]'s methods[i]. The API worker gathers each model's rows and carries
        several models' calls in one request (coalescer.RunnerHop); the runner does not batch them again."""
        now = time.monotonic()
        self._used.update(dict.fromkeys(tags, now))  # before a load here may prune a version among them
        served, changed = self._record.current()
        if changed:  # a version another runner loaded: load it now, not on its first call
            for tag in set(served.models.values()) - set(self.models):
                asyncio.ensure_future(self._preload(tag))
        answers = []
        for tag, method, rows in zip(tags, methods, blocks):
            try:
                answers.append(await self._serve(await self._model(tag), method, rows))
            except Exception as exc:  # that model's call alone fails (the API answers its requests 500)
                limited(logger).error(f"infer_failed:{type(exc).__name__}", "serving %s failed: %r", tag, exc,
                                      exc_info=exc)
                answers.append(FAILED_CALL)
        return answers

    @bentoml.api
    async def load(self, tag: str) -> str:
        """Checks a version as the start-up check does (model_check.check: here, where scikit-learn is
        imported already, in a worker thread), keeps its facts for every process, loads it and tries it
        on its signature's example row: what went wrong, or ""."""
        try:
            if tag not in self.models:
                folder = model_check.StoredFolder.read(bentoml.models.get(tag).path)
                with served_models.gil_shared_finely():
                    checked = await asyncio.to_thread(model_check.check, folder)
                if "refused" in checked:
                    return checked["refused"]
                STATE.keep_facts(tag, model_check.ModelFacts.from_json(checked))
            with served_models.gil_shared_finely():
                model = await self._model(tag)
            if model.signature.example and np.isnan(model.serve("predict", model.signature.example_matrix())).any():
                return "it could not predict its signature's example row; see the server log"
        except Exception as exc:
            logger.warning("loading %s failed", tag, exc_info=exc)
            return f"{type(exc).__name__}: {exc}"
        return ""


# `bentoml build` packs every configured model, not only the one declared on the class
ModelRunner.models.extend(bentoml.models.BentoModel(str(m.tag)) for m in STARTING if m is not BOOT)


async def metadata(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().models.default.metadata)


@bentoml.service(**config.service("SklearnService"))
@bentoml.asgi_app(Starlette(routes=[Route("/metadata", metadata)]), name="metadata")
@bentoml.asgi_app(open_inference.app, name="open_inference")  # the V2 protocol beside the API
@bentoml.asgi_app(model_routes.docs({m.tag.name: STATE.facts(m).signature for m in STARTING}), name="models_docs")
@bentoml.asgi_app(model_routes.app, name="models")  # mounted before the docs: it serves every request
class SklearnService:
    """The API: each route parses its form of request, and the model's PredictionCore validates,
    predicts and records (see prediction_core.py). The routes here answer for the default model;
    /models/{name}/... (model_routes.py) and V2 (open_inference.py) for any served model."""

    runner = bentoml.depends(ModelRunner)
    start_grpc, stop_grpc = grpc_lifecycle.hooks(APP)  # V2 over gRPC too: a server per worker, on app.grpc.port

    def __init__(self) -> None:
        self.monitoring = config.service("SklearnService").get("monitoring", {})
        # the calls of every model but the boot one travel together (the boot one has the batchable APIs)
        self.hop = RunnerHop(self._call_infer)
        self.models = served_models.ServedModels(STATE, self._core, self._warm)
        # the classic APIs' own input types: /models/{name}/... validate bodies as they do
        self.inputs = {name: SklearnService.apis[name].input_spec for name in model_routes.ROUTES}
        self.runner_dead_seconds = float(APP["runner_dead_seconds"])
        # Keep the ~170k start-up objects out of garbage collection: a full pass over
        # them would stall the event loop for ~85 ms.
        gc.freeze()

    def _core(self, stored, facts) -> PredictionCore:
        tag = str(stored.tag)
        call = self._call_runner if tag == str(BOOT.tag) else functools.partial(self.hop, tag)
        return PredictionCore(stored.info, facts.signature, facts, call, APP, self.monitoring)

    # the runner's proxy is looked up per call: it is not set up during __init__
    async def _call_runner(self, method: str, rows: np.ndarray) -> np.ndarray:
        return await getattr(self.runner.to_async, method)(rows)

    async def _call_infer(self, tags: list[str], methods: list[str], blocks: list[np.ndarray]) -> list[np.ndarray]:
        return await self.runner.to_async.infer(tags=tags, methods=methods, blocks=blocks)

    async def _warm(self, tag: str) -> str:
        return await self.runner.to_async.load(tag=tag)

    def model(self, name: str, version: str | None = None) -> PredictionCore | None:
        """The served model by name (and version, if given), or None."""
        return self.models.get(name, version)

    def __is_alive__(self) -> bool:
        """/livez fails once the runner has been unreachable for app.runner_dead_seconds: inside
        a container BentoML does not restart a dead runner, so the orchestrator has to."""
        stalled = self.models.default.stalled_since
        return stalled is None or time.monotonic() - stalled < self.runner_dead_seconds

    @bentoml.api
    async def predict(self, features: Row) -> Prediction:
        """One row, positional or by feature name: the seed's contract."""
        return await answered(model_routes.predict(self.models.default, features))

    @bentoml.api
    async def predict_batch(self, instances: list[Row]) -> Predictions:
        """Many rows in one request (at most app.max_batch_rows); order is kept."""
        return await answered(model_routes.predict_batch(self.models.default, instances))

    @bentoml.api
    async def predict_proba(self, features: Row) -> Probabilities:
        """Class probabilities keyed by class label (classifiers only)."""
        return await answered(model_routes.predict_proba(self.models.default, features))

    @bentoml.api
    async def explain(self, features: Row, explained_class: Value = None,
                      top: Top | None = None) -> ExplainedPrediction:
        """One row's prediction and why: what each feature adds to the model's output (README
        "Explanations"). explained_class: the class whose output is explained (default: the
        predicted one); top: only the largest contributions."""
        return await answered(model_routes.explain(self.models.default, features, explained_class, top))

    @bentoml.api
    async def explain_batch(self, instances: list[Row], explained_class: Value = None,
                            top: Top | None = None) -> ExplainedPredictions:
        """/explain for many rows (at most app.max_batch_rows); order is kept."""
        return await answered(model_routes.explain_batch(self.models.default, instances, explained_class, top))


async def answered(answer: t.Awaitable):
    """The route's body, or the error response of its RequestError."""
    try:
        return await answer
    except RequestError as exc:
        return error_response(exc)


SklearnService.add_asgi_middleware(HealthProbes)  # outermost: probes stay open
# in this order: the key is checked before any body is read
if api_key := configured_api_key(APP):
    SklearnService.add_asgi_middleware(ApiKeyAuth, api_key=api_key,
                                       protect_metrics=bool(APP["auth"]["protect_metrics"]))
SklearnService.add_asgi_middleware(RequestGuard, max_bytes=int(APP["max_body_bytes"]),
                                   body_seconds=float(APP["client_timeout_seconds"]))
