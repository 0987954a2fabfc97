"""The one path every prediction takes, whatever protocol brought it.

`PredictionCore` holds what serving one model needs in the API service: its row
validation (RowEncoder), the coalescers in front of the runner, its labels and
outputs, its metadata, metrics, drift and payload log. Front ends (the classic
routes, V2 over REST) are thin adapters: they parse their protocol into rows,
call `answer`, and render the `Answer` or the `RequestError` it raises in their
own form. Every refusal and failure is counted here, once, whoever asked.
"""

from __future__ import annotations

import logging
import time
import typing as t
from dataclasses import dataclass

import numpy as np

from sklearn_service import model_check
from sklearn_service.coalescer import Coalescer
from sklearn_service.errors import RequestError, runner_failure
from sklearn_service.metrics import ServiceMetrics
from sklearn_service.payload_log import PayloadLog
from sklearn_service.schemas import label_value
from sklearn_service.signature import Signature
from sklearn_service.validation import RowEncoder

logger = logging.getLogger("sklearn_service")

# A runner method by name, called with encoded rows (the runner's own endpoints: predict, predict_all)
RunnerCall = t.Callable[[str, np.ndarray], t.Awaitable[np.ndarray]]


@dataclass
class Answer:
    predictions: list                # per row: the class label as answered (see label_value) or the value
    outputs: dict[str, np.ndarray]   # the other outputs asked for, by name: [N, k] (see model_check.output_columns)


class PredictionCore:
    def __init__(self, info, signature: Signature, facts: model_check.ModelFacts, call_runner: RunnerCall,
                 app: dict, monitoring: dict, registry=None):
        self.signature = signature
        self.schema = RowEncoder(signature, reject_unseen=app["unknown_categories"] == "reject")
        self.model_kind = facts.model_kind
        self.labels = None if signature.classes is None else [label_value(c) for c in signature.classes]
        self.label_keys = None if signature.classes is None else [str(c) for c in signature.classes]
        self.outputs = ("predict", *facts.outputs)  # what `answer` can give, in runner column order
        self.columns = model_check.output_columns(facts.outputs, len(self.labels or ()))
        self.max_rows = int(app["max_batch_rows"])
        meta = info.metadata
        self.name, _, self.version = str(info.tag).partition(":")
        self.metadata = {"tag": str(info.tag), "created": info.creation_time.isoformat(),
                         "task": signature.task, "model_kind": facts.model_kind, "outputs": list(self.outputs),
                         "feature_names": signature.names, "classes": signature.classes,
                         "input_schema": signature.json_schema(), "signature": signature.to_metadata(),
                         **{k: meta[k] for k in ("holdout_metrics", "versions", "training") if k in meta}}
        self.metrics = ServiceMetrics(str(info.tag), self.metadata["created"], signature, facts.model_kind,
                                      drift=app["drift"], registry=registry)
        self.payload_log = PayloadLog(bool(monitoring.get("enabled")), signature)
        limits = dict(max_rows=self.max_rows, max_waiting_rows=int(app["max_queued_rows"]),
                      stall_after=float(app["runner_stall_seconds"]))
        # predict alone, or predict with every other output (one runner call either way)
        self._predict = Coalescer(self._runner("predict", call_runner), **limits)
        self._predict_all = Coalescer(self._runner("predict_all", call_runner), **limits)

    def _runner(self, method: str, call_runner: RunnerCall):
        async def call(rows: np.ndarray) -> np.ndarray:
            self.metrics.rows_per_call.observe(len(rows))
            return await call_runner(method, rows)
        return call

    @property
    def stalled_since(self) -> float | None:
        """When the runner stopped answering (time.monotonic()), None while it answers."""
        stalls = [c.stalled_since for c in (self._predict, self._predict_all) if c.stalled_since is not None]
        return min(stalls, default=None)

    def check_outputs(self, outputs: t.Collection[str]) -> None:
        for name in outputs:
            if name in self.outputs:
                continue
            if name == "predict_proba" and self.labels is None:
                raise RequestError("not_a_classifier", f"this model's task is {self.signature.task}, not "
                                                       "classification: it has no class probabilities")
            if name == "predict_proba":
                raise RequestError("no_probabilities", f"this {self.model_kind} classifier has no predict_proba: "
                                                       "use /predict for its labels")
            raise RequestError("unknown_output", f"unknown output {str(name)[:60]!r}; this model has: "
                                                 f"{', '.join(self.outputs)}")

    def refuse(self, endpoint: str, exc: RequestError, received: int) -> RequestError:
        """Counts a request its front end refused before it had rows (unreadable in its protocol)."""
        self.metrics.reject(endpoint, exc.reason, received)
        return exc

    async def answer(self, endpoint: str, rows: t.Sequence, outputs: t.Collection[str] = ("predict",),
                     one_row: bool = False) -> Answer:
        """Validate, predict, record. `rows` are the request's rows as its protocol decoded them (each
        a list in feature order or a dict by name); `one_row`: a single row, whose errors name no
        instance. Raises RequestError: the client's mistake (4xx) or runner trouble (5xx)."""
        start = time.perf_counter()
        try:
            self.check_outputs(outputs)
            matrix = self.schema.single(rows[0]) if one_row else self.schema.matrix(rows, self.max_rows)
        except RequestError as exc:
            raise self.refuse(endpoint, exc, len(rows)) from None
        others = [name for name in outputs if name != "predict"]
        try:
            # other outputs come with predict from one runner call; predict is always the model's own
            out = await (self._predict_all if others else self._predict)(matrix)
        except Exception as exc:  # the runner failed or is unreachable: never the client's fault
            self.metrics.error(endpoint, len(matrix))
            raise runner_failure(exc, logger) from None
        if np.isnan(out).any():  # rows the model raised on (see ServingModel): the request's own problem
            failed = np.flatnonzero(np.isnan(out.reshape(len(matrix), -1)).any(axis=1)).tolist()
            raise self.refuse(endpoint, RequestError("model_refused_row", f"the model could not predict "
                                                     f"instance(s) {failed[:10]}; see the server log", 422),
                              len(matrix))
        predicted = out if out.ndim == 1 else out[:, 0]  # predict_all: predict is column 0
        self.metrics.success(endpoint, matrix, predicted, time.perf_counter() - start)
        self.payload_log.write(endpoint, matrix, predicted)
        labels = predicted.tolist() if self.labels is None else [self.labels[int(i)] for i in predicted]
        return Answer(labels, {name: out[:, self.columns[name]] for name in others})
