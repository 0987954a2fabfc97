"""The model as the runner serves it: encoded rows in, class indices or values out.

A compiled path answers small calls; scikit-learn the rest, on the input the model
was fitted on (model_input.py). `predict` is always the model's own
predict (never an argmax of probabilities: for some models, e.g. SVC(probability=True),
they differ); `predict_all` answers predict and the model's other outputs together,
from one call per method; `explain` answers those and each row's explanation.

A batch the model raises on is split in halves until each row it raises on is alone:
log2(n) calls for one such row, instead of n, so the batch-mates of a bad row wait
milliseconds. That search runs in a worker thread, so the runner keeps answering
other batches meanwhile; a row that still raises comes back as NaN (its request's 422).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from sklearn_service.category_codes import UNSEEN_CODE
from sklearn_service.compiled import compile_pipeline
from sklearn_service.log_limit import limited
from sklearn_service.model_check import output_columns
from sklearn_service.signature import Signature

logger = logging.getLogger(__name__)


def probe_rows(signature: Signature, count: int = 256, seed: int = 0) -> np.ndarray:
    """Encoded rows over the training range of every feature, unseen categories and gaps included."""
    rng = np.random.default_rng(seed)
    columns = []
    for f in signature.features:
        if f.is_category:
            column = rng.integers(int(UNSEEN_CODE), len(f.category_list), count).astype(float)  # every code, and unseen
        elif f.kind == "boolean":
            column = rng.integers(0, 2, count).astype(float)
        elif f.stats:
            column = rng.uniform(f.stats["min"], f.stats["max"], count)
        else:
            column = rng.normal(size=count)
        if f.nullable and (f.stats or f.is_category):  # gaps seen in training data, not merely allowed
            column[rng.random(count) < 0.1] = np.nan
        columns.append(column)
    return np.stack(columns, axis=1)


def failing_rows(answer, rows: np.ndarray, out: np.ndarray) -> list[tuple[int, Exception]]:
    """Sets out[rows] = answer(rows) (`rows` an index array), halving around the rows `answer`
    raises on; returns those rows with their errors (their `out` rows are left as they were)."""
    failed = []

    def solve(part: np.ndarray) -> None:
        try:
            out[part] = answer(part)
            return
        except Exception as exc:
            if len(part) == 1:
                failed.append((int(part[0]), exc))
                return
        middle = len(part) // 2
        solve(part[:middle])
        solve(part[middle:])

    if len(rows):
        solve(rows)
    return failed


def _non_finite_groups(prepared) -> list[np.ndarray]:
    """Rows of a dense float matrix holding NaN (and no infinity), and rows holding infinity."""
    if not isinstance(prepared, np.ndarray) or prepared.dtype.kind != "f" or prepared.ndim != 2:
        return []
    infinite, missing = np.isinf(prepared).any(axis=1), np.isnan(prepared).any(axis=1)
    return [group for group in (np.flatnonzero(missing & ~infinite), np.flatnonzero(infinite)) if len(group)]


class ServingModel:
    def __init__(self, pipeline, signature: Signature, compiled: bool = True, outputs: tuple | None = None,
                 explainer=None):
        """`outputs`: the model's outputs beside predict that predict_all answers, in order (see
        model_check); by default predict_proba for a model that has it. `explainer`: the model's
        explain.Explainer, or a function that makes it on the first explanation (its arrays then cost
        memory only for models asked to explain); None when it has none."""
        self.pipeline = pipeline
        self.explainer = explainer
        self.signature = signature
        self.classes = getattr(pipeline, "classes_", None)
        if outputs is None:
            outputs = ("predict_proba",) if hasattr(pipeline, "predict_proba") else ()
        self.outputs = tuple(outputs)
        self.columns = output_columns(self.outputs, len(self.classes) if self.classes is not None else 0)
        self.compiled = compile_pipeline(pipeline, signature.category_columns()) if compiled else None
        # a few rows and many: compiled ensembles find leaves one way for each (compiled_trees.NATIVE_MIN_ROWS)
        probes = probe_rows(signature)
        if self.compiled is not None and not (self._agrees(probes[:4]) and self._agrees(probes)):
            logger.warning("compiled model disagrees with scikit-learn on probe rows; serving with scikit-learn")
            self.compiled = None
        self.compiled_max_rows = 0 if self.compiled is None else self.compiled.max_rows or np.inf
        logger.info("model path: %s", "scikit-learn" if self.compiled is None else "compiled" + (
            f" up to {self.compiled.max_rows} rows" if self.compiled.max_rows else ""))

    def _agrees(self, rows: np.ndarray) -> bool:
        try:
            expected = self._predict_all(rows, self.pipeline, self.signature.to_model_input(rows))
            return np.array_equal(self._predict_all(rows, self.compiled, rows), expected, equal_nan=True)
        except Exception:  # e.g. NaN that this model refuses: no evidence of agreement
            return False

    def _model(self, rows: np.ndarray):
        """The model for a call of this many rows, and the input it takes."""
        if len(rows) <= self.compiled_max_rows:
            return self.compiled, rows
        return self.pipeline, self.signature.to_model_input(rows)

    def convert(self, method: str, out) -> np.ndarray:
        """Class labels -> their index in classes_; everything as float64. A predict that answers
        several values per row is refused, never reduced to one (see model_check)."""
        out = np.asarray(out)
        if out.ndim == 2 and method in ("predict", "score_samples"):
            if out.shape[1] != 1:
                raise ValueError(f"{method} answered {out.shape[1]} values per row; one is served")
            out = out[:, 0]
        if method == "predict" and self.classes is not None:
            index = np.searchsorted(self.classes, out)
            index = np.clip(index, 0, len(self.classes) - 1)
            if not np.array_equal(self.classes[index], out):  # classes_ not sorted: look each up
                lookup = {label: i for i, label in enumerate(self.classes.tolist())}
                index = np.array([lookup[label] for label in out.tolist()])
            return index.astype(np.float64)
        return np.asarray(out, dtype=np.float64)

    def _predict(self, rows: np.ndarray, model=None, X=None) -> np.ndarray:
        if model is None:
            model, X = self._model(rows)
        return self.convert("predict", model.predict(X))

    def _predict_all(self, rows: np.ndarray, model=None, X=None) -> np.ndarray:
        """Columns: predict, then each of self.outputs (predict_proba: one per class)."""
        if model is None:
            model, X = self._model(rows)
        both = getattr(model, "predict_and_proba", None)  # the compiled path: one pass for both
        if both is not None and "predict_proba" in self.outputs:
            predicted, proba = both(X)
            answers = {"predict": predicted, "predict_proba": proba}
        else:
            answers = {"predict": model.predict(X)}
        for output in self.outputs:
            if output not in answers:
                answers[output] = getattr(model, output)(X)
        columns = [self.convert(name, answers[name]) for name in ("predict", *self.outputs)]
        return np.column_stack(columns)

    def _answer(self, method: str, rows: np.ndarray, model=None, X=None) -> np.ndarray:
        if method == "predict":
            return self._predict(rows, model, X)
        answer = self._predict_all(rows, model, X)
        return answer if method == "predict_all" else answer[:, self.columns[method]]

    def _final_step_input(self, rows: np.ndarray):
        """(final step, its input for every row) when the steps before it take the whole batch:
        the search for failing rows then calls only the final step (usually where a batch raises,
        on a NaN or infinity the steps before made), not the DataFrame and transformers each time."""
        if not hasattr(self.pipeline, "steps") or len(self.pipeline.steps) < 2:
            return None
        try:
            return self.pipeline.steps[-1][1], self.pipeline[:-1].transform(self.signature.to_model_input(rows))
        except Exception:
            return None

    def _isolate(self, method: str, rows: np.ndarray) -> np.ndarray:
        """The batch raised: the rows it can answer answered, the others NaN."""
        if method == "predict":
            out = np.full(len(rows), np.nan)
        else:
            columns = self.columns[method] if method != "predict_all" else slice(0, max(
                c.stop for c in self.columns.values()))
            out = np.full((len(rows), columns.stop - columns.start), np.nan)
        staged = self._final_step_input(rows)
        todo, failed = np.arange(len(rows)), []
        if staged is None:
            def answer(part):
                return self._answer(method, rows[part])
        else:
            final, prepared = staged

            def answer(part):
                return self._answer(method, rows[part], final, prepared[part])

            # A final step that refuses NaN (or infinity) refuses every row holding one: one call
            # tells, where halving would take two calls a row when most of the batch holds them.
            for group in _non_finite_groups(prepared):
                try:
                    answer(group[:1])
                except Exception as exc:
                    failed += [(int(i), exc) for i in group]
                    todo = np.setdiff1d(todo, group)
        failed += failing_rows(answer, todo, out)
        if failed:
            # a client can repeat this at request rate: once per interval, with a count
            limited(logger).warning(f"model_refused_row:{type(failed[0][1]).__name__}",
                                    "model raised on %d of %d rows; first: %r", len(failed), len(rows), failed[0][1])
        return out

    def serve(self, method: str, rows: np.ndarray) -> np.ndarray:
        try:
            return self._answer(method, rows)
        except Exception:
            return self._isolate(method, rows)

    async def serve_async(self, method: str, rows: np.ndarray) -> np.ndarray:
        """serve(), with the search for failing rows off the event loop."""
        try:
            return self._answer(method, rows)
        except Exception:
            return await asyncio.to_thread(self._isolate, method, rows)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.serve("predict", rows)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.serve("predict_proba", rows)

    def predict_all(self, rows: np.ndarray) -> np.ndarray:
        return self.serve("predict_all", rows)

    def explain(self, rows: np.ndarray) -> np.ndarray:
        """rows: encoded rows, then the index of the class to explain (NaN: the predicted one) ->
        predict_all's columns, then per row the explained output, its base value, the class explained
        (-1: a regressor's value) and one contribution per feature (explain.Explanation). A row the
        model or the explainer raises on is all NaN."""
        features, asked = rows[:, :-1], rows[:, -1]
        if callable(self.explainer):  # made on first use (a thread racing here makes a spare one)
            self.explainer = self.explainer()
        explainer = self.explainer
        answer = self.serve("predict_all", features)
        explained = np.full((len(rows), 3 + features.shape[1]), np.nan)

        def explain(part: np.ndarray) -> np.ndarray:
            classes = None if self.classes is None else \
                np.where(np.isnan(asked[part]), answer[part, 0], asked[part]).astype(np.intp)
            e = explainer.explain(features[part], classes)
            return np.column_stack([e.outputs, e.base_values, np.full(len(part), -1) if classes is None else classes,
                                    e.contributions])

        failed = failing_rows(explain, np.flatnonzero(~np.isnan(answer).any(axis=1)), explained)
        if failed:
            limited(logger).warning(f"explain_refused_row:{type(failed[0][1]).__name__}",
                                    "explaining raised on %d of %d rows; first: %r", len(failed), len(rows),
                                    failed[0][1])
        out = np.hstack([answer, explained])
        out[np.isnan(explained).any(axis=1)] = np.nan
        return out
