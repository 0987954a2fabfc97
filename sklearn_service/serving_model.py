"""The model as the runner serves it: a compiled path for small calls, scikit-learn otherwise."""

from __future__ import annotations

import logging

import numpy as np

from sklearn_service.compiled import compile_pipeline

logger = logging.getLogger(__name__)

# Above this many rows scikit-learn's C tree loop beats the compiled path.
COMPILED_MAX_ROWS = 512


def probe_rows(feature_stats: dict, count: int = 256, seed: int = 0) -> np.ndarray:
    """Rows spread over the training range of every feature."""
    low = np.array([s["min"] for s in feature_stats.values()])
    high = np.array([s["max"] for s in feature_stats.values()])
    return np.random.default_rng(seed).uniform(low, high, size=(count, len(low)))


class ServingModel:
    def __init__(self, pipeline, compiled: bool = True, probe: np.ndarray | None = None):
        self.pipeline = pipeline
        self.compiled = compile_pipeline(pipeline) if compiled else None
        if self.compiled is not None and probe is not None and not self._agrees(probe):
            logger.warning("compiled model disagrees with scikit-learn on probe rows; serving with scikit-learn")
            self.compiled = None
        logger.info("model path: %s", "compiled trees up to %d rows" % COMPILED_MAX_ROWS if self.compiled else "scikit-learn")

    def _agrees(self, rows: np.ndarray) -> bool:
        method = "predict_proba" if hasattr(self.pipeline, "predict_proba") else "predict"
        return np.array_equal(getattr(self.compiled, method)(rows), getattr(self.pipeline, method)(rows))

    def _for(self, rows: np.ndarray):
        return self.compiled if self.compiled is not None and len(rows) <= COMPILED_MAX_ROWS else self.pipeline

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self._for(rows).predict(rows)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self._for(rows).predict_proba(rows)
