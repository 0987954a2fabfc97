"""A signature from data: per column of a DataFrame its kind, the dtype the model is fitted on,
categories with their shares, numeric statistics with decile bins, and one real example row; and
the target's distribution, for prediction drift. Used where training or reference data is at hand
(train.py, the model import), never by the service.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sklearn_service.category_codes import is_missing_value
from sklearn_service.signature import Feature, Signature, json_list, json_value

QUANTILES = np.linspace(0.1, 0.9, 9)  # inner decile edges: the bins of drift statistics (PSI)


def signature_from_frame(X: pd.DataFrame, task: str, classes=None, takes_frame: bool = True,
                         kinds: dict | None = None, y=None) -> Signature:
    """From training or reference data (a DataFrame whose columns are the model's features)."""
    kinds = kinds or {}
    features = [_describe_column(str(name), X[name], kinds.get(str(name))) for name in X.columns]
    example = _example_row(X, {f.name: f.kind for f in features})
    return Signature(features, task, json_list(classes), takes_frame, example,
                     _target_stats(y, task, classes) if y is not None else None)


def infer_kind(column: pd.Series) -> str:
    values = column.dropna()
    if pd.api.types.is_bool_dtype(column) or (len(values) and values.map(type).eq(bool).all()):
        return "boolean"
    if pd.api.types.is_integer_dtype(column):
        return "integer"
    if pd.api.types.is_numeric_dtype(column):  # whole numbers with gaps read as floats are integers too
        whole = len(values) > 0 and bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
        return "integer" if whole else "number"
    return "category"


def _describe_column(name: str, column: pd.Series, kind: str | None) -> Feature:
    kind = kind or infer_kind(column)
    values = column.dropna()
    feature = Feature(name, kind, _model_dtype(column), bool(column.isna().any()))
    if kind == "category":
        shares = values.value_counts(normalize=True, sort=False)
        ordered = sorted(shares.index, key=lambda v: (str(type(v)), v))
        feature.categories = json_list(ordered)
        feature.category_shares = [float(shares[v]) for v in ordered]
        return feature
    numbers = pd.to_numeric(values, errors="coerce").astype(float).dropna().to_numpy()
    if len(numbers):
        feature.stats = numeric_stats(numbers)
    return feature


def numeric_stats(numbers: np.ndarray) -> dict:
    """Range, moments and decile bins (inner edges, and the share of training rows in each of the
    len(bins) + 1 bins) of a number column."""
    edges = np.unique(np.quantile(numbers, QUANTILES))
    return {"min": float(numbers.min()), "max": float(numbers.max()), "mean": float(numbers.mean()),
            "std": float(numbers.std(ddof=1)) if len(numbers) > 1 else 0.0,
            "bins": edges.tolist(), "bin_shares": bin_shares(numbers, edges).tolist()}


def bin_shares(numbers: np.ndarray, edges: np.ndarray | list) -> np.ndarray:
    """Share of values per bin: up to the first edge, between consecutive edges, above the last."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), numbers, side="right"), minlength=len(edges) + 1)
    return counts / max(len(numbers), 1)


def _model_dtype(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int64"
    if pd.api.types.is_numeric_dtype(column):
        return "float64"
    return "object"


def _target_stats(y, task: str, classes) -> dict:
    if task == "classification":
        shares = y.value_counts(normalize=True)
        return {"class_shares": [float(shares.get(c, 0.0)) for c in classes]}
    return numeric_stats(np.asarray(y, dtype=float))


def _example_row(X: pd.DataFrame, kinds: dict) -> dict:
    """The first complete training row, as a client sends it (booleans true/false, whole numbers as such)."""
    complete = X.dropna()
    row = (complete if len(complete) else X).iloc[0]
    convert = {"boolean": bool, "integer": int}
    return {str(k): convert.get(kinds.get(str(k), "number"), lambda v: v)(json_value(v))
            for k, v in row.items() if not is_missing_value(v)}
