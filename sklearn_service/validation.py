"""Turns request rows into the float64 matrix the runner takes, or a client error naming the feature.

Runs in the API service before anything is batched, so one bad request can never
fail the requests that would have shared its batch. Categories become codes into
the signature's category lists (category_codes.py).
"""

from __future__ import annotations

import math
import typing as t
from itertools import chain

import numpy as np

from sklearn_service.category_codes import UNSEEN_CODE, code_table
from sklearn_service.errors import RequestError
from sklearn_service.signature import Feature, Signature
from sklearn_service.user_input import shown, shown_list

NOTHING = type(None)
LARGEST = float(np.finfo(np.float32).max)  # trees compare float32: beyond this a number is infinite


def _number(value, f: Feature, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError("wrong_type", f"{where}feature {f.name!r} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isnan(number) and f.nullable:
        return number  # as null: a missing value
    if not math.isfinite(number):
        raise RequestError("non_finite", f"{where}feature {f.name!r} is not a finite number: {shown(value)}")
    if abs(number) > LARGEST:
        raise RequestError("out_of_range", f"{where}feature {f.name!r} is out of range: {shown(value)} "
                                           f"(scikit-learn's trees take numbers up to ±{LARGEST:.3g})")
    return number


def _boolean(value, f: Feature, where: str) -> float:
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return float(value)
    raise RequestError("wrong_type", f"{where}feature {f.name!r} must be true or false, got {_shown(value)}")


def _shown(value) -> str:
    kind = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}.get(type(value), "a number")
    text = repr(value)
    return f"{kind} ({text[:40] + '...' if len(text) > 40 else text})"


class RowEncoder:
    """Validates rows against a model's signature and encodes them for the runner."""

    def __init__(self, signature: Signature, reject_unseen: bool = False):
        self.signature = signature
        self.features = signature.features
        self.names = signature.names
        self.index = {name: i for i, name in enumerate(self.names)}
        self.codes = {i: self._code_table(f) for i, f in enumerate(self.features) if f.is_category}
        # what an unseen category may look like: a string for string categories, else any scalar
        self.category_types = [(str,) if f.is_category and all(isinstance(c, str) for c in f.category_list)
                               else (str, int, float) for f in self.features]
        self.refuse_unseen = [f.is_category and (reject_unseen or f.unseen_categories == "refused")
                              for f in self.features]
        self.nullable = np.array([f.nullable for f in self.features])
        # plain numbers only: whole batches are checked in one numpy pass
        self.all_numbers = all(f.kind in ("number", "integer") for f in self.features)

    @staticmethod
    def _code_table(f: Feature) -> dict:
        categories = f.category_list
        table = code_table(categories)
        if all(isinstance(c, str) for c in categories):  # numbers sent for string categories, e.g. 94110 for "94110"
            table.update([(int(c), code) for c, code in table.items() if c.lstrip("-").isdigit()])
        return table

    def _value(self, i: int, value, where: str) -> float:
        f = self.features[i]
        if value is None:
            if not f.nullable:
                raise RequestError("missing_value", f"{where}feature {f.name!r} may not be missing: "
                                                    "the model was trained without missing values there")
            return math.nan
        if f.is_category:
            code = self.codes[i].get(value) if isinstance(value, (str, int, float)) else None  # a list: unhashable
            if code is not None:
                return code
            if not isinstance(value, self.category_types[i]):
                raise RequestError("wrong_type", f"{where}feature {f.name!r} must be a category "
                                                 f"such as {f.category_list[0]!r}, got {_shown(value)}")
            if self.refuse_unseen[i]:
                known = ", ".join(map(repr, f.category_list[:10])) + (", ..." if len(f.category_list) > 10 else "")
                raise RequestError("unknown_category", f"{where}feature {f.name!r} has no category {shown(value)}; "
                                                       f"known: {known}")
            return UNSEEN_CODE
        if f.kind == "boolean":
            return _boolean(value, f, where)
        return _number(value, f, where)

    def row(self, values: list | dict, where: str = "") -> list[float]:
        if isinstance(values, dict):
            values = self._from_names(values, where)
        elif len(values) != len(self.names):
            raise RequestError("wrong_length", f"{where}expected {len(self.names)} features, got {len(values)}")
        return [self._value(i, value, where) for i, value in enumerate(values)]

    def single(self, values: list | dict) -> np.ndarray:
        return np.array([self.row(values)], dtype=np.float64)

    def matrix(self, rows: t.Sequence | np.ndarray, max_rows: int) -> np.ndarray:
        """`rows`: lists or dicts, or an [N, F] array of numbers (as a protocol decoded them: its own
        dtype, so that integers reach a category lookup or an error message as the client sent them)."""
        if len(rows) == 0:
            raise RequestError("empty_batch", "instances must hold at least one row")
        if len(rows) > max_rows:
            raise RequestError("too_many_rows", f"at most {max_rows} instances per request, got {len(rows)}", 413)
        if isinstance(rows, np.ndarray):
            if self.all_numbers and (checked := self._checked(rows.astype(np.float64))) is not None:
                return checked
            listed: t.Sequence = rows.tolist()  # categories to encode, or a value to refuse: row by row
        else:
            listed = rows
        if (fast := self._numbers_at_once(listed)) is not None:
            return fast
        return np.array([self.row(r, f"instance {i}: ") for i, r in enumerate(listed)], dtype=np.float64)

    def _numbers_at_once(self, rows: t.Sequence) -> np.ndarray | None:
        """Positional rows of plain numbers in one numpy pass; None sends them row by row,
        where an error names the instance and the feature."""
        if not self.all_numbers or not all(type(r) is list for r in rows):
            return None
        if not set(map(type, chain.from_iterable(rows))) <= {float, int, NOTHING}:
            return None  # strings, booleans: refused row by row with the feature named
        try:
            matrix = np.array(rows, dtype=np.float64)  # None becomes NaN
        except (ValueError, OverflowError):
            return None
        return self._checked(matrix)

    def _checked(self, matrix: np.ndarray) -> np.ndarray | None:
        """The matrix when every value may be served as it is; None: row by row."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.names):
            return None
        finite = np.isfinite(matrix)
        if not finite.all() and not (finite | (np.isnan(matrix) & self.nullable)).all():
            return None
        if (np.abs(matrix[finite]) > LARGEST).any():
            return None
        return matrix

    def _from_names(self, named: dict, where: str) -> list:
        unknown = sorted(set(named) - self.index.keys())
        if unknown:
            raise RequestError("unknown_feature", f"{where}unknown feature name(s): {shown_list(unknown, 5)}")
        missing = [f.name for f in self.features if f.name not in named and not f.nullable]
        if missing:
            raise RequestError("missing_feature", f"{where}missing {len(missing)} feature(s): {missing[:5]}")
        return [named.get(name) for name in self.names]
