from __future__ import annotations

import math

import numpy as np
import pytest

from sklearn_service.errors import RequestError
from sklearn_service.validation import FeatureSchema

SCHEMA = FeatureSchema(["a", "b", "c"])


def reason_of(call):
    with pytest.raises(RequestError) as info:
        call()
    return info.value.reason, str(info.value), info.value.status


def test_positional_and_named_rows_agree():
    assert SCHEMA.single([1, 2, 3]).tolist() == [[1.0, 2.0, 3.0]]
    assert SCHEMA.single({"c": 3, "a": 1, "b": 2}).tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize("values, reason, words", [
    ([1, 2], "wrong_length", "expected 3 features, got 2"),
    ([1, 2, 3, 4], "wrong_length", "expected 3 features, got 4"),
    ([1, math.nan, 3], "non_finite", "feature 1 ('b') is not a finite number"),
    ([1, 2, math.inf], "non_finite", "feature 2 ('c')"),
    ({"a": 1, "b": 2, "zz": 3}, "unknown_feature", "['zz']"),
    ({"a": 1, "b": 2}, "missing_feature", "missing 1 feature(s): ['c']"),
])
def test_bad_rows_name_the_problem(values, reason, words):
    got_reason, message, status = reason_of(lambda: SCHEMA.single(values))
    assert got_reason == reason and words in message and status == 400


def test_batches_are_bounded_and_errors_name_the_row():
    assert SCHEMA.matrix([[1, 2, 3], [4, 5, 6]], 2).shape == (2, 3)
    assert reason_of(lambda: SCHEMA.matrix([], 5))[0] == "empty_batch"
    assert reason_of(lambda: SCHEMA.matrix([[1, 2, 3]] * 3, 2))[::2] == ("too_many_rows", 413)
    reason, message, _ = reason_of(lambda: SCHEMA.matrix([[1, 2, 3], [1, 2]], 5))
    assert reason == "wrong_length" and message.startswith("instance 1: ")


def test_matrix_is_float64():
    assert SCHEMA.matrix([[1, 2, 3]], 1).dtype == np.float64
