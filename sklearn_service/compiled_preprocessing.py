"""Fitted transformers as numpy functions on the serving matrix, with scikit-learn's exact outputs.

The matrix holds floats; a categorical column holds codes into its category list
(category_codes.py: UNSEEN_CODE for a value no encoder has seen, NaN for missing). Each
column is described by a *kind*: None for a numeric column, the tuple of its
category values for a categorical one. `compile_transformer` turns a fitted
transformer and the kinds of its input columns into a function and the kinds of
its output columns, or None when it cannot reproduce scikit-learn exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils._missing import is_scalar_nan
from sklearn.utils._set_output import _get_output_config

from sklearn_service.category_codes import UNSEEN_CODE

Transform = Callable[[np.ndarray], np.ndarray]
Compiled = tuple[Transform, list] | None


def _numeric(kinds) -> bool:
    return all(kind is None for kind in kinds)


def _categorical(kinds) -> bool:
    return all(kind is not None for kind in kinds)


def _refuse_infinity(X: np.ndarray) -> None:
    if np.isinf(X).any():  # scikit-learn's input check allows NaN only
        raise ValueError("Input X contains infinity or a value too large for dtype('float64').")


def _position(categories) -> Callable:
    """value -> its index in an encoder's `categories_` entry, -1 if absent; dict lookup, as the encoders do."""
    index = {value: i for i, value in enumerate(categories) if not is_scalar_nan(value)}
    missing = next((i for i, value in enumerate(categories) if is_scalar_nan(value)), -1)
    return lambda value: missing if is_scalar_nan(value) else index.get(value, -1)


class CodeTable:
    """Per-column lookup from code to an encoder's output number, built from
    number(column, position of the value in encoder.categories_[column] or -1, whether it is missing).

    Column j's slots: 0 for unseen (UNSEEN_CODE), 1..K for codes 0..K-1, K+1 for missing."""

    def __init__(self, kinds, encoder, number: Callable, dtype):
        entries = []
        for j, (kind, categories) in enumerate(zip(kinds, encoder.categories_)):
            position = _position(categories)
            slots = [(-1, False)] + [(position(value), False) for value in kind] + [(position(np.nan), True)]
            entries.append(np.array([number(j, p, missing) for p, missing in slots], dtype=dtype))
        sizes = np.array([len(entry) for entry in entries])
        self.base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.missing_slot = sizes - 1
        self.table = np.concatenate(entries)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        slot = np.where(np.isnan(codes), self.missing_slot, codes - UNSEEN_CODE).astype(np.intp)
        return self.table[slot + self.base]


def _imputer(step: SimpleImputer, kinds) -> Compiled:
    stats = step.statistics_
    if step.add_indicator or not is_scalar_nan(step.missing_values) or any(is_scalar_nan(s) for s in stats):
        return None  # indicator columns or dropped all-missing features change the shape
    if _numeric(kinds):
        if stats.dtype.kind != "f":
            return None  # strings: a categorical column that came without its category list
        fill = stats

        def impute(X):
            _refuse_infinity(X)
            return np.where(np.isnan(X), fill, X)
        return impute, kinds
    if not _categorical(kinds):
        return None
    # a categorical column is filled with a value; in code space, its code (new values join the list)
    kinds = [kind if value in kind else kind + (value,) for kind, value in zip(kinds, stats)]
    fill = np.array([kind.index(value) for kind, value in zip(kinds, stats)], dtype=np.float64)
    return (lambda X: np.where(np.isnan(X), fill, X)), kinds


def _scaler(step: StandardScaler, kinds) -> Compiled:
    if not _numeric(kinds):
        return None
    mean = step.mean_ if step.with_mean else 0.0
    scale = step.scale_ if step.with_std else 1.0

    def standardize(X):
        _refuse_infinity(X)
        return (X - mean) / scale
    return standardize, kinds


def _encoder_is_exact(step, kinds) -> bool:
    return _categorical(kinds) and not step._infrequent_enabled and np.dtype(step.dtype) == np.float64


def _one_hot(step: OneHotEncoder, kinds) -> Compiled:
    # "infrequent_if_exist" without infrequent categories ignores unknowns too
    ignores_unknown = step.handle_unknown in ("ignore", "infrequent_if_exist")
    if not _encoder_is_exact(step, kinds) or not ignores_unknown or step.drop_idx_ is not None or step.sparse_output:
        return None
    offsets = np.cumsum([0] + [len(c) for c in step.categories_])
    column = CodeTable(kinds, step, lambda j, p, missing: offsets[j] + p if p >= 0 else -1, np.intp)

    def one_hot(X):
        hot = column(X)
        out = np.zeros((len(X), offsets[-1]))
        rows, inputs = np.nonzero(hot >= 0)
        out[rows, hot[rows, inputs]] = 1.0
        return out
    return one_hot, [None] * offsets[-1]


def _ordinal(step: OrdinalEncoder, kinds) -> Compiled:
    if not _encoder_is_exact(step, kinds) or step.handle_unknown != "use_encoded_value":
        return None

    def number(j, position, missing):
        if missing and position >= 0:
            return step.encoded_missing_value
        return position if position >= 0 else step.unknown_value
    return CodeTable(kinds, step, number, np.float64), [None] * len(kinds)


def _is_passthrough(step) -> bool:
    # ColumnTransformer stores "passthrough" as an identity FunctionTransformer (validate=True would refuse NaN)
    return step == "passthrough" or (isinstance(step, FunctionTransformer) and step.func is None and not step.validate)


def _column_transformer(ct: ColumnTransformer, kinds) -> Compiled:
    if ct.sparse_output_ or ct.transformer_weights or _get_output_config("transform", ct)["dense"] != "default":
        return None
    parts, out_kinds = [], []
    for name, step, _, _ in ct._iter(fitted=True, column_as_labels=False, skip_drop=True, skip_empty_columns=True):
        columns = np.asarray(ct._transformer_to_input_indices[name])
        compiled = compile_transformer(step, [kinds[i] for i in columns])
        if compiled is None:
            return None
        parts.append((compiled[0], columns))
        out_kinds += compiled[1]
    if not parts or not _numeric(out_kinds):
        return None  # nothing selected, or categorical values that make scikit-learn's output an object array
    return (lambda X: np.hstack([transform(X[:, columns]) for transform, columns in parts])), out_kinds


def _pipeline(pipeline: Pipeline, kinds) -> Compiled:
    transforms = []
    for _, step in pipeline.steps:
        if step is None or step == "passthrough":
            continue
        compiled = compile_transformer(step, kinds)
        if compiled is None:
            return None
        transform, kinds = compiled
        transforms.append(transform)
    return _chain(transforms), kinds


def _chain(transforms: list[Transform]) -> Transform:
    def run(X):
        for transform in transforms:
            X = transform(X)
        return X
    return run


TRANSFORMERS = {SimpleImputer: _imputer, StandardScaler: _scaler, OneHotEncoder: _one_hot,
                OrdinalEncoder: _ordinal, ColumnTransformer: _column_transformer, Pipeline: _pipeline}


def compile_transformer(step, kinds: list) -> Compiled:
    """(function, output column kinds) reproducing a fitted transformer on columns of these kinds, or None."""
    if _is_passthrough(step):
        return (lambda X: X), kinds
    make = TRANSFORMERS.get(type(step))
    return make(step, kinds) if make else None
