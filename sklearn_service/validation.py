"""Turns request rows into a float matrix the model accepts, or a client error naming the problem.

Runs in the API service before anything is batched, so one bad request can never
fail the requests that would have shared its batch.
"""

from __future__ import annotations

import math
import typing as t

import numpy as np

from sklearn_service.errors import RequestError


class FeatureSchema:
    def __init__(self, feature_names: t.Sequence[str]):
        self.names = list(feature_names)
        self.index = {name: i for i, name in enumerate(self.names)}

    def row(self, values: list[float] | dict[str, float], where: str = "") -> list[float]:
        if isinstance(values, dict):
            values = self._from_names(values, where)
        elif len(values) != len(self.names):
            raise RequestError("wrong_length", f"{where}expected {len(self.names)} features, got {len(values)}")
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise RequestError("non_finite", f"{where}feature {i} ({self.names[i]!r}) is not a finite number: {value}")
        return values

    def single(self, values: list[float] | dict[str, float]) -> np.ndarray:
        return np.array([self.row(values)], dtype=np.float64)

    def matrix(self, rows: t.Sequence, max_rows: int) -> np.ndarray:
        if not rows:
            raise RequestError("empty_batch", "instances must hold at least one row")
        if len(rows) > max_rows:
            raise RequestError("too_many_rows", f"at most {max_rows} instances per request, got {len(rows)}", 413)
        if all(isinstance(r, list) for r in rows):  # fast path: positional rows, checked in one go
            try:
                matrix = np.array(rows, dtype=np.float64)
            except ValueError:  # ragged rows: the row-by-row pass below names the bad one
                matrix = None
            if matrix is not None and matrix.shape[1:] == (len(self.names),) and np.isfinite(matrix).all():
                return matrix
        return np.array([self.row(r, f"instance {i}: ") for i, r in enumerate(rows)], dtype=np.float64)

    def _from_names(self, named: dict[str, float], where: str) -> list[float]:
        unknown = sorted(set(named) - self.index.keys())
        if unknown:
            raise RequestError("unknown_feature", f"{where}unknown feature name(s): {unknown[:5]}")
        missing = [name for name in self.names if name not in named]
        if missing:
            raise RequestError("missing_feature", f"{where}missing {len(missing)} feature(s): {missing[:5]}")
        return [named[name] for name in self.names]
