from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sklearn_service.errors import RequestError
from sklearn_service.category_codes import UNSEEN_CODE
from sklearn_service.signature import Feature, Signature
from sklearn_service.validation import RowEncoder

SCHEMA = RowEncoder(Signature([Feature("a"), Feature("b"), Feature("c")]))

MIXED = Signature([
    Feature("island", "category", "object", False, ["Biscoe", "Dream"]),
    Feature("bill", "number", "float64", True),
    Feature("tagged", "boolean", "bool", False),
    Feature("zip", "category", "object", True, ["94110", "10001"]),
], takes_frame=True)


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
    ([1, math.nan, 3], "non_finite", "feature 'b' is not a finite number"),
    ([1, 2, math.inf], "non_finite", "feature 'c'"),
    ([1, 2, 10**400], "non_finite", "feature 'c'"),
    ([1, 2, -1e300], "out_of_range", "feature 'c' is out of range"),
    ([1, "2", 3], "wrong_type", "feature 'b' must be a number, got a string ('2')"),
    ([True, 2, 3], "wrong_type", "feature 'a' must be a number, got a boolean"),
    ([1, None, 3], "missing_value", "feature 'b' may not be missing"),
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
    reason, message, _ = reason_of(lambda: SCHEMA.matrix([[1, 2, 3], [1, 2, "x"]], 5))
    assert reason == "wrong_type" and message.startswith("instance 1: feature 'c'")
    reason, message, _ = reason_of(lambda: SCHEMA.matrix([[1, 2, 3], [1, 2, 4e38]], 5))
    assert reason == "out_of_range" and message.startswith("instance 1: feature 'c'")
    reason, message, _ = reason_of(lambda: SCHEMA.matrix([[1, 2, 3], [1, False, 3]], 5))
    assert reason == "wrong_type" and "feature 'b'" in message


NULLABLE = Signature([Feature("a"), Feature("b", nullable=True), Feature("c")])
BIG_CODES = Signature([Feature("code", "category", "int64", False, [2**53, 2**53 + 1]), Feature("n")],
                      takes_frame=True)


@pytest.mark.parametrize("encoder, rows", [
    (SCHEMA, [[1, 2, 3], [4.5, -6, 7e30]]),
    (RowEncoder(NULLABLE), [[1, math.nan, 3], [4, 5, 6]]),              # NaN where a value may be missing
    (SCHEMA, [[1, 2, 3], [1, math.nan, 3]]),                            # ... and where it may not
    (SCHEMA, [[1, 2, 3], [math.inf, 2, 3]]),
    (SCHEMA, [[1, 2, 3], [1, 2, 4e38]]),                                # beyond float32
    (RowEncoder(MIXED), [[0.0, 1.5, 1.0, 1.0]]),                        # categories: encoded row by row
    (RowEncoder(MIXED), [[0, 1, 2, 1]]),                                # integers named as sent: (2), not (2.0)
    (RowEncoder(BIG_CODES), [[2**53 + 1, 3]]),                          # an integer category beyond float64
    (RowEncoder(BIG_CODES), [[2**53 + 7, 3]]),                          # ... and an unseen one
    (SCHEMA, [[1, 2, 3], [4, 5, 2**62]]),
])
def test_an_array_of_numbers_is_taken_as_its_rows_are(encoder, rows):
    """A protocol that decoded numbers as an array of their datatype (V2 tensors) gets the matrix, or
    the error naming the instance and feature, that the same rows as lists get."""
    def outcome(given):
        try:
            return encoder.matrix(given, 5).tolist()
        except RequestError as exc:
            return exc.reason, str(exc)
    dtype = np.int64 if all(type(v) is int for row in rows for v in row) else np.float64
    assert str(outcome(np.array(rows, dtype=dtype))) == str(outcome(rows))


def test_matrix_is_float64():
    assert SCHEMA.matrix([[1, 2, 3]], 1).dtype == np.float64


def test_mixed_rows_are_encoded_as_category_codes():
    encoder = RowEncoder(MIXED)
    row = encoder.single({"island": "Dream", "bill": None, "tagged": True, "zip": 10001})
    assert row[0, 0] == 1.0 and math.isnan(row[0, 1]) and row[0, 2] == 1.0 and row[0, 3] == 1.0
    assert encoder.single(["Mars", 3.5, False, None])[0, 0] == UNSEEN_CODE  # unseen: answered
    named_without_nullable = encoder.single({"island": "Biscoe", "tagged": False})
    assert np.isnan(named_without_nullable[0, [1, 3]]).all()
    batch = encoder.matrix([["Biscoe", 1.0, True, "94110"], {"island": "Dream", "tagged": False}], 5)
    assert batch.shape == (2, 4) and batch[0, 3] == 0.0


@pytest.mark.parametrize("values, reason, words", [
    (["Biscoe", "long", True, None], "wrong_type", "feature 'bill' must be a number, got a string"),
    ([3, 1.0, True, None], "wrong_type", "feature 'island' must be a category"),
    (["Biscoe", 1.0, "yes", None], "wrong_type", "feature 'tagged' must be true or false"),
    ([None, 1.0, True, None], "missing_value", "feature 'island' may not be missing"),
    ({"island": "Biscoe", "tagged": True, "colour": "red"}, "unknown_feature", "['colour']"),
])
def test_mixed_rows_name_the_feature(values, reason, words):
    got_reason, message, status = reason_of(lambda: RowEncoder(MIXED).single(values))
    assert (got_reason, status) == (reason, 400) and words in message


def test_unseen_categories_can_be_refused():
    reason, message, _ = reason_of(lambda: RowEncoder(MIXED, reject_unseen=True).single(["Mars", 1.0, True, None]))
    assert reason == "unknown_category" and "'island' has no category 'Mars'" in message and "'Biscoe'" in message
    refusing_model = Signature([Feature("island", "category", "object", False, ["Biscoe"],
                                        unseen_categories="refused")])
    assert reason_of(lambda: RowEncoder(refusing_model).single(["Mars"]))[0] == "unknown_category"


def test_signature_round_trips_and_decodes_to_training_dtypes():
    frame = pd.DataFrame({"island": ["Biscoe", "Dream", None, "Dream"], "bill": [1.5, None, 2.0, 3.0],
                          "tagged": [True, False, True, True], "count": [1, 2, 3, 4]})
    signature = Signature.from_frame(frame, "regression")
    assert [f.kind for f in signature.features] == ["category", "number", "boolean", "integer"]
    assert signature.features[0].categories == ["Biscoe", "Dream"] and signature.features[0].nullable
    assert signature.features[0].category_shares == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    again = Signature.from_metadata({"signature": signature.to_metadata()})
    assert again == signature
    decoded = again.to_model_input(np.array([[1.0, 2.5, 1.0, 7.0], [UNSEEN_CODE, np.nan, 0.0, 8.0],
                                             [np.nan, 1.0, 1.0, 9.0]]))
    assert list(decoded.columns) == ["island", "bill", "tagged", "count"]
    assert decoded["island"][0] == "Dream" and decoded["island"][1] not in ("Biscoe", "Dream")
    assert pd.isna(decoded["island"][2]) and pd.isna(decoded["bill"][1])
    assert decoded["tagged"].dtype == bool and decoded["count"].dtype == np.int64


def test_nan_is_a_missing_value_only_where_one_is_allowed():
    # as README's errors table says: NaN for a feature that may be missing is a gap, like null (a
    # numeric V2 tensor has no other way to send one); elsewhere it is non_finite, and ±inf always is
    encoder = RowEncoder(MIXED)
    assert np.isnan(encoder.single(["Dream", math.nan, True, None])[0, 1])
    assert np.isnan(encoder.matrix([["Dream", math.nan, True, None]], 1)[0, 1])
    assert reason_of(lambda: encoder.single(["Dream", math.inf, True, None]))[0] == "non_finite"
    assert reason_of(lambda: SCHEMA.single([1, math.nan, 3]))[0] == "non_finite"


HUGE = "x" * 1_000_000


@pytest.mark.parametrize("encoder, values", [
    (SCHEMA, {HUGE: 1, "a": 1, "b": 2, "c": 3}),                       # unknown feature name
    (SCHEMA, {**{f"{HUGE}{i}": 1 for i in range(20)}}),                # many unknown names
    (SCHEMA, [1, 2, 10**4000]),                                        # non_finite repeated a 4,000-digit number
    (SCHEMA, [1, 2, -(10**300)]),                                      # out_of_range
    (SCHEMA, [1, 2, HUGE]),                                            # wrong_type
    (RowEncoder(MIXED, reject_unseen=True), [HUGE, 1.0, True, None]),  # unknown_category
    (RowEncoder(MIXED), [[HUGE], 1.0, True, None]),                    # a list for a category
    (RowEncoder(MIXED), ["Dream", 1.0, HUGE, None]),                   # not a boolean
])
def test_error_messages_stay_short_whatever_the_client_sent(encoder, values):
    with pytest.raises(RequestError) as info:
        encoder.single(values)
    assert len(str(info.value)) < 1000, str(info.value)[:300]
