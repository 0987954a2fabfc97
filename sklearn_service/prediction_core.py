"""The one path every prediction takes, whatever protocol brought it.

`PredictionCore` holds what serving one model needs in the API service: its row
validation (RowEncoder), the coalescers in front of the runner, its labels and
outputs, its metadata, metrics, drift and payload log. Front ends (the classic
routes, V2 over REST) are thin adapters: they parse their protocol into rows,
call `answer`, and render the `Answer` or the `RequestError` it raises in their
own form. Every refusal and failure is counted here, once, whoever asked.

Explanations (explain.py, in the runner) take the same path: the output
"explanation" asks the runner's `explain`, which answers the model's outputs and
each row's explanation in one call; the class to explain travels as one more
column of the rows, so that requests asking for different classes share a batch.
"""

from __future__ import annotations

import asyncio
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
from sklearn_service.user_input import shown, shown_list
from sklearn_service.validation import RowEncoder

logger = logging.getLogger("sklearn_service")

# A runner method by name, called with encoded rows (the runner's own endpoints: predict, predict_all, explain)
RunnerCall = t.Callable[[str, np.ndarray], t.Awaitable[np.ndarray]]
# Rows per runner call to explain: ~0.5 ms each for a forest of 100 trees, so a call stays far
# below app.runner_stall_seconds and the runner's max_latency_ms; a larger request takes several.
EXPLAIN_ROWS_PER_CALL = 64
REFUSED_RETRY_SECONDS = 0.05  # after a runner's refusal (429/503), one more try this much later
EXPLANATION = "explanation"  # the output that asks for one: contributions, (rows, features)


@dataclass
class Explained:
    output: str                  # the output explained: probability (of a class), log_odds, value, ...
    values: np.ndarray           # (rows,) that output: base value + the row's contributions, summed
    base_values: np.ndarray      # (rows,) its expected value, from which contributions are measured
    classes: list | None         # per row, the class whose output is explained; None for regressors


@dataclass
class Answer:
    predictions: list                # per row: the class label as answered (see label_value) or the value
    outputs: dict[str, np.ndarray]   # the other outputs asked for, by name: [N, k] (see model_check.output_columns)
    explained: Explained | None = None  # with the output "explanation" (its contributions are in `outputs`)


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
        # the runner's explain answers predict_all's columns, then output, base value, class, contributions
        self.explained_output = facts.explained_output  # None: not explainable, for the reason below
        self.not_explainable = facts.not_explainable
        self._explained_at = width = max(c.stop for c in self.columns.values())
        self.columns[EXPLANATION] = slice(width + 3, width + 3 + len(signature.features))
        self.max_rows = int(app["max_batch_rows"])
        meta = info.metadata
        self.name, _, self.version = str(info.tag).partition(":")
        self.metadata = {"tag": str(info.tag), "created": info.creation_time.isoformat(),
                         "task": signature.task, "model_kind": facts.model_kind, "outputs": list(self.outputs),
                         "explained_output": self.explained_output, "not_explainable": self.not_explainable,
                         "feature_names": signature.names, "classes": signature.classes,
                         "input_schema": signature.json_schema(), "signature": signature.to_metadata(),
                         **{k: meta[k] for k in ("holdout_metrics", "versions", "training") if k in meta}}
        self.metrics = ServiceMetrics(self.name, str(info.tag), self.metadata["created"], signature,
                                      facts.model_kind, drift=app["drift"], registry=registry)
        self.payload_log = PayloadLog(bool(monitoring.get("enabled")), signature, str(info.tag))
        self._call_runner = call_runner
        # Each model has its own coalescers: its own queue limit (app.max_queued_rows) and at most two
        # calls in flight per API worker, so a flood of one model cannot hold the runner from the others.
        waiting, stall = int(app["max_queued_rows"]), float(app["runner_stall_seconds"])
        # predict alone, or predict with every other output (one runner call either way)
        self._predict = Coalescer(self._runner("predict", call_runner), self.max_rows, waiting, stall)
        self._predict_all = Coalescer(self._runner("predict_all", call_runner), self.max_rows, waiting, stall)
        self._explain = Coalescer(self._runner("explain", call_runner), EXPLAIN_ROWS_PER_CALL, waiting, stall)

    def retire(self) -> None:
        """Another version took over, or the model was unloaded: requests in flight still finish here."""
        self.metrics.retire()

    async def check(self) -> None:
        """The model answers its signature's example row through the runner (before it takes over),
        else RequestError saying why."""
        if not self.signature.example:
            return  # nothing to try: the runner's own load probed the model
        try:
            out = await self._call_runner("predict", self.signature.example_matrix())
        except Exception as exc:
            raise runner_failure(exc, logger) from None
        if np.isnan(out).any():
            raise RequestError("model_failed_check", f"model {self.metadata['tag']} could not predict its "
                                                     "signature's example row; see the server log", 422)

    def _runner(self, method: str, call_runner: RunnerCall):
        async def call(rows: np.ndarray) -> np.ndarray:
            self.metrics.rows_per_call.observe(len(rows))
            try:
                return await call_runner(method, rows)
            except Exception as exc:
                # BentoML's batcher refuses a batch it expects to finish late (max_latency_ms): a moment's
                # slowness (e.g. a live load in the runner), worth one more try before the clients see 503
                if getattr(exc, "error_code", None) not in (429, 503):
                    raise
            await asyncio.sleep(REFUSED_RETRY_SECONDS)
            return await call_runner(method, rows)
        return call

    @property
    def stalled_since(self) -> float | None:
        """When the runner stopped answering (time.monotonic()), None while it answers."""
        stalls = [c.stalled_since for c in (self._predict, self._predict_all, self._explain)
                  if c.stalled_since is not None]
        return min(stalls, default=None)

    def check_outputs(self, outputs: t.Collection[str]) -> None:
        for name in outputs:
            if name in self.outputs:
                continue
            if name == EXPLANATION and self.explained_output is None:
                raise RequestError("not_explainable", f"this {self.model_kind} model's predictions cannot be "
                                                      f"explained: {self.not_explainable}")
            if name == EXPLANATION:
                continue
            if name == "predict_proba" and self.labels is None:
                raise RequestError("not_a_classifier", f"this model's task is {self.signature.task}, not "
                                                       "classification: it has no class probabilities")
            if name == "predict_proba":
                raise RequestError("no_probabilities", f"this {self.model_kind} classifier has no predict_proba: "
                                                       "use /predict for its labels")
            raise RequestError("unknown_output", f"unknown output {str(name)[:60]!r}; this model has: "
                                                 f"{', '.join(self.outputs)}")

    def class_index(self, label) -> int:
        """The index of the class a client named by its label (as answered, or as text)."""
        if self.labels is None or self.label_keys is None:
            raise RequestError("not_a_classifier", f"this model's task is {self.signature.task}, not "
                                                   "classification: it has no class to choose")
        for i, (value, key) in enumerate(zip(self.labels, self.label_keys)):
            if label == key or (isinstance(label, bool) == isinstance(value, bool) and label == value):
                return i
        raise RequestError("unknown_class", f"unknown class {shown(label)}; this model's classes: "
                                            f"{shown_list(self.signature.classes, 10)}")

    def refuse(self, endpoint: str, exc: RequestError, received: int) -> RequestError:
        """Counts a request its front end refused before it had rows (unreadable in its protocol)."""
        self.metrics.reject(endpoint, exc.reason, received)
        return exc

    async def answer(self, endpoint: str, rows: t.Sequence | np.ndarray, outputs: t.Collection[str] = ("predict",),
                     one_row: bool = False, explained_class=None) -> Answer:
        """Validate, predict, record. `rows` are the request's rows as its protocol decoded them (each
        a list in feature order or a dict by name; or an [N, F] array of numbers); `one_row`:
        a single row, whose errors name no instance; `explained_class`: with the output "explanation",
        the label of the class whose output is explained (None: each row's predicted class). Raises
        RequestError: the client's mistake (4xx) or runner trouble (5xx)."""
        start = time.perf_counter()
        explain = EXPLANATION in outputs
        try:
            self.check_outputs(outputs)
            chosen = None if explained_class is None else self.class_index(explained_class)
            matrix = self.schema.single(rows[0]) if one_row else self.schema.matrix(rows, self.max_rows)
        except RequestError as exc:
            raise self.refuse(endpoint, exc, len(rows)) from None
        others = [name for name in outputs if name != "predict"]
        try:
            # other outputs come with predict from one runner call; predict is always the model's own
            if explain:
                out = await self._explained(matrix, chosen)
            else:
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
        answer = Answer(labels, {name: out[:, self.columns[name]] for name in others})
        if explain:
            at = self._explained_at
            classes = None if self.labels is None else [self.labels[int(i)] for i in out[:, at + 2]]
            answer.explained = Explained(str(self.explained_output), out[:, at], out[:, at + 1], classes)
        return answer

    async def _explained(self, matrix: np.ndarray, class_index: int | None) -> np.ndarray:
        """The runner's explain of these rows, the class to explain as their last column (NaN: the
        predicted one), in calls of at most EXPLAIN_ROWS_PER_CALL rows."""
        rows = np.hstack([matrix, np.full((len(matrix), 1), np.nan if class_index is None else float(class_index))])
        parts = [rows[i:i + EXPLAIN_ROWS_PER_CALL] for i in range(0, len(rows), EXPLAIN_ROWS_PER_CALL)]
        return np.concatenate(await asyncio.gather(*(self._explain(part) for part in parts)))
