"""The category-code convention: how a category value crosses from the API service to the runner.

Rows cross as one float64 matrix. A category feature's column holds codes: k for the k-th value of
the feature's category list (the signature's, in code order), UNSEEN_CODE for a value never seen in
training, NaN for a missing value. scikit-learn's encoders treat every unseen value alike, so one
sentinel per feature stands for all of them exactly. UNSEEN_CODE lies below every code, so a sorted
search puts it first. numpy only: the API service imports this.
"""

from __future__ import annotations

import math
import typing as t

import numpy as np

UNSEEN_CODE = -1.0
UNSEEN_LABEL = "\x00unseen category"  # a string no encoder was fitted on: a model input's unseen value


def is_missing_value(value) -> bool:
    """A category value that stands for missing: None or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def code_table(categories: list) -> dict:
    """value -> its code."""
    return {value: float(code) for code, value in enumerate(categories)}


def encode(values: t.Iterable, categories: list) -> np.ndarray:
    """Category values as codes: UNSEEN_CODE for a value not in `categories`, NaN for a missing one."""
    table = code_table(categories)
    return np.array([np.nan if is_missing_value(v) else table.get(v, UNSEEN_CODE) for v in values], dtype=np.float64)


def decode(codes: np.ndarray, categories: list, unseen, missing) -> np.ndarray:
    """Codes back to values (object array): UNSEEN_CODE -> `unseen`, NaN -> `missing`."""
    values = np.array([*categories, missing, unseen], dtype=object)  # UNSEEN_CODE (-1) picks the last
    return values[np.where(np.isnan(codes), len(categories), codes).astype(np.int64)]


def is_unseen(codes: np.ndarray) -> np.ndarray:
    return codes == UNSEEN_CODE
