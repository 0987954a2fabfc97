"""The model as the runner serves it: encoded rows in, class indices or values out.

A compiled path answers small calls; scikit-learn the rest, on the input the model
was fitted on (see Signature.to_model_input). A batch the model raises on is
retried row by row, so one row it cannot take fails only its own request.
"""

from __future__ import annotations

import logging

import numpy as np

from sklearn_service.compiled import compile_pipeline
from sklearn_service.signature import Signature

logger = logging.getLogger(__name__)

# Above this many rows scikit-learn's C tree loop beats the compiled path.
COMPILED_MAX_ROWS = 512


def probe_rows(signature: Signature, count: int = 256, seed: int = 0) -> np.ndarray:
    """Encoded rows over the training range of every feature, unseen categories and gaps included."""
    rng = np.random.default_rng(seed)
    columns = []
    for f in signature.features:
        if f.is_category:
            column = rng.integers(-1, len(f.categories), count).astype(float)
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


class ServingModel:
    def __init__(self, pipeline, signature: Signature, compiled: bool = True):
        self.pipeline = pipeline
        self.signature = signature
        self.classes = getattr(pipeline, "classes_", None)
        self.compiled = compile_pipeline(pipeline, signature.category_columns()) if compiled else None
        if self.compiled is not None and not self._agrees(probe_rows(signature)):
            logger.warning("compiled model disagrees with scikit-learn on probe rows; serving with scikit-learn")
            self.compiled = None
        logger.info("model path: %s", "compiled up to %d rows" % COMPILED_MAX_ROWS if self.compiled else "scikit-learn")

    def _agrees(self, rows: np.ndarray) -> bool:
        method = "predict_proba" if hasattr(self.pipeline, "predict_proba") else "predict"
        try:
            expected = getattr(self.pipeline, method)(self.signature.to_model_input(rows))
            return np.array_equal(getattr(self.compiled, method)(rows), expected)
        except Exception:  # e.g. NaN that this model refuses: no evidence of agreement
            return False

    def _run(self, method: str, rows: np.ndarray) -> np.ndarray:
        if self.compiled is not None and len(rows) <= COMPILED_MAX_ROWS:
            return getattr(self.compiled, method)(rows)
        return getattr(self.pipeline, method)(self.signature.to_model_input(rows))

    def _row_by_row(self, method: str, rows: np.ndarray, failed) -> np.ndarray:
        """The batch raised: each row alone; a row that still raises comes back as NaN."""
        if len(rows) > 1:
            logger.warning("model raised on a batch of %d rows; retrying row by row", len(rows))
        answers = []
        for row in rows:
            try:
                answers.append(self.convert(method, self._run(method, row[None]))[0])
            except Exception as exc:
                logger.warning("model raised on a row: %r", exc)
                answers.append(failed)
        return np.array(answers)

    def convert(self, method: str, out: np.ndarray) -> np.ndarray:
        """Class labels -> their index in classes_; everything as float64."""
        if method == "predict" and self.classes is not None:
            index = np.searchsorted(self.classes, out)
            index = np.clip(index, 0, len(self.classes) - 1)
            if not np.array_equal(self.classes[index], out):  # classes_ not sorted: look each up
                lookup = {label: i for i, label in enumerate(self.classes.tolist())}
                index = np.array([lookup[label] for label in out.tolist()])
            return index.astype(np.float64)
        return np.asarray(out, dtype=np.float64)

    def _answer(self, method: str, rows: np.ndarray, failed) -> np.ndarray:
        try:
            return self.convert(method, self._run(method, rows))
        except Exception:
            return self._row_by_row(method, rows, failed)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self._answer("predict", rows, np.nan)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self._answer("predict_proba", rows, np.full(len(self.classes), np.nan))
