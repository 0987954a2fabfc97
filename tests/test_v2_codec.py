"""The V2 wire format in-process (v2_codec): every way a request can be wrong, named in a 400,
without a server; the row mapping; answers encoded as JSON and as binary tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.v2_cases import CANCER, OUTPUTS, PENGUINS, ROW
from sklearn_service import v2_codec
from sklearn_service.errors import RequestError
from sklearn_service.signature import Feature, Signature
from sklearn_service.validation import RowEncoder


def tensor(shape, data, datatype="FP64", name="input-0", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def encoded(body, signature: Signature = CANCER, headers=None) -> np.ndarray:
    """What the service does with a V2 body before the runner: decode, map to rows, validate."""
    text = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = v2_codec.decode_request(headers or {}, text, OUTPUTS)
    return RowEncoder(signature).matrix(v2_codec.rows(request, signature), 1000)


@pytest.mark.parametrize("body, words", [
    (tensor([1, 29], [1.0] * 29), "shape must be [N, 30]"),
    (tensor([1, 30], [1.0] * 29), "data holds 29 values, its shape needs 30"),
    (tensor([2, 30], [ROW, [1.0] * 29]), "data holds 59 values, its shape needs 60"),
    (tensor([-1, 30], ROW), "shape must be"),
    (tensor([10 ** 12, 30], ROW), "data holds 30 values, its shape needs 30000000000000"),
    (tensor([1, 30, 1], ROW), "shape must be"),
    (tensor("1,30", ROW), "shape must be"),
    (tensor([1, 30], "1.0, 2.0"), "data must be a list"),
    (tensor([1, 30], {"a": 1}), "data must be a list"),
    (tensor([1, 30], [ROW[:15], *ROW[15:]]), "mixes lists and values"),
    (tensor([1, 30], ROW, datatype="FP128"), "unknown datatype 'FP128'"),
    (tensor([1, 30], ["1.0"] * 30), 'FP64 data cannot hold "1.0"'),
    (tensor([1, 30], [1.5] * 30, datatype="INT64"), "INT64 data cannot hold 1.5"),
    (tensor([1, 30], [300] * 30, datatype="UINT8"), "do not fit UINT8"),
    (tensor([1, 30], [True] * 30, datatype="BOOL"), "feature 'mean radius' must be a number, got a boolean"),
    (tensor([1, 30], [None] * 30), "feature 'mean radius' may not be missing"),
    (tensor([1, 30], [1e300] * 30, datatype="FP32"), "not a finite number"),
    (tensor([0, 30], []), "at least one row"),
    (tensor([1, 30], ROW, outputs=[{"name": "classes"}]),
     "unknown output 'classes'; this model has: predict, predict_proba"),
    (tensor([1, 30], ROW, outputs="predict"), "outputs must be a list"),
    (tensor([1, 30], ROW, id=7), "id must be a string"),
    (tensor([1, 30], ROW, id="\ud800"), "the request['id'] holds a lone surrogate"),
    (tensor([1, 30], ["\udfff"] * 30, datatype="BYTES"), "['data'][0] holds a lone surrogate"),
    (tensor([1, 30], ROW, parameters=[]), "parameters must be an object"),
    ({"inputs": []}, "inputs must be a non-empty list"),
    ({"inputs": [{"shape": [1, 30]}]}, "with a string `name`"),
    ({"inputs": [tensor([1, 30], ROW)["inputs"][0]] * 2}, "send one [N, 30] tensor or one input per feature"),
    ({"inputs": [{"name": "mean radius", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
     "missing input(s) for feature(s) ['mean texture'"),
    ([1, 2], "must be a JSON object"),
    (b"{not json", "not valid JSON"),
])
def test_bad_requests_are_400_naming_the_problem(body, words):
    with pytest.raises(RequestError) as refused:
        encoded(body)
    assert refused.value.status == 400 and words in str(refused.value), str(refused.value)


@pytest.mark.parametrize("shape", [[10 ** 400, 30], [1, 10 ** 400], [2 ** 63, 30], [True, 30], [1, True],
                                   [1.0, 30], [1e308, 30], ["1", 30], [None, 30], [[1], 30], [-1, 30]],
                         ids=lambda v: str(v)[:12])
def test_shape_dimensions_are_bounded_json_integers(shape):
    with pytest.raises(RequestError, match="shape must be"):
        encoded(tensor(shape, ROW))


def binary(header: dict, raw: bytes, length: str | None = None) -> tuple[dict, bytes]:
    text = json.dumps(header).encode()
    return {v2_codec.HEADER_LENGTH: length or str(len(text))}, text + raw


@pytest.mark.parametrize("size, raw, length, words", [
    (240, np.ones(30).tobytes(), "99999", "Inference-Header-Content-Length must be"),
    (240, np.ones(30).tobytes(), "-5", "Inference-Header-Content-Length must be"),
    (480, np.ones(30).tobytes(), None, "binary_data_size must be a whole number of bytes that the body still holds"),
    (240, np.ones(31).tobytes(), None, "8 bytes after the JSON header belong to no input"),
    (232, np.ones(29).tobytes(), None, "232 bytes of FP64 data, its shape needs 30 x 8"),
    ("240", np.ones(30).tobytes(), None, "binary_data_size must be"),
    (10 ** 400, np.ones(30).tobytes(), None, "binary_data_size must be"),
    (True, np.ones(30).tobytes(), None, "binary_data_size must be"),
    (-1, np.ones(30).tobytes(), None, "binary_data_size must be"),
])
def test_bad_binary_data_is_400(size, raw, length, words):
    headers, body = binary({"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                                        "parameters": {"binary_data_size": size}}]}, raw, length)
    with pytest.raises(RequestError) as refused:
        encoded(body, headers=headers)
    assert refused.value.status == 400 and words in str(refused.value) and len(str(refused.value)) < 300


@pytest.mark.parametrize("length", [100, 2 ** 32 - 1])
def test_binary_bytes_elements_are_checked(length):
    headers, body = binary({"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "BYTES",
                                        "parameters": {"binary_data_size": 8}}]},
                           length.to_bytes(4, "little") + b"abcd")
    with pytest.raises(RequestError, match="BYTES element 0 runs past its data"):
        encoded(body, headers=headers)


@pytest.mark.parametrize("length", ["\u00b2", "\u0661\u0662", "\uff11\uff12", "9" * 400, "1" + "0" * 19, "+12", "-0",
                                    " 12", ""])
def test_header_length_takes_only_bounded_ascii_digits(length):
    """str.isdigit() takes '²' (int() then raised) and Arabic-Indic or full-width digits (int() read them)."""
    with pytest.raises(RequestError, match="Inference-Header-Content-Length must be"):
        v2_codec.split_body({v2_codec.HEADER_LENGTH: length}, json.dumps(tensor([1, 30], ROW)).encode())


@pytest.mark.parametrize("body, where", [
    (b'{"id": "\\ud800", "inputs": []}', "the request['id']"),
    (b'{"inputs": [{"name": "a\\udBFF", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}',
     "the request['inputs'][0]['name']"),
    (b'{"inputs": [], "parameters": {"\\uDC00": 1}}', "a key of the request['parameters']"),
])
def test_text_utf8_cannot_encode_is_refused_before_predicting(body, where):
    """A lone surrogate (legal in JSON escapes) would fail only when the answer is encoded, after the
    prediction was made and counted."""
    with pytest.raises(RequestError, match="lone surrogate") as refused:
        v2_codec.decode_request({}, body, OUTPUTS)
    assert refused.value.status == 400 and str(refused.value).startswith(where)
    # a paired surrogate escape is one character, and passes
    assert v2_codec.split_body({}, b'{"id": "\\ud83d\\ude00"}')[0]["id"] == "\U0001f600"


HUGE = "x" * 1_000_000
BIG_NUMBER = "9" * 4000


@pytest.mark.parametrize("body", [
    {"inputs": [{"name": HUGE, "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]},          # unknown input
    {"inputs": [{"name": "t", "datatype": HUGE, "shape": [1, 2], "data": [1, 2]}]},             # datatype
    {"inputs": [{"name": "t", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]},        # one tensor
    {"inputs": [{"name": HUGE + str(i), "datatype": "FP64", "shape": [1], "data": [1]} for i in range(9)]},
    {"inputs": [{"name": "island", "datatype": "BYTES", "shape": [1], "data": [HUGE]},
                {"name": "bill", "datatype": "FP64", "shape": [1], "data": [1.0]}]},            # unknown category
    {"inputs": [{"name": "island", "datatype": "BYTES", "shape": [1], "data": ["Dream"]},
                {"name": HUGE, "datatype": "FP64", "shape": [1], "data": [1.0]}]},              # unknown feature
    {"inputs": [{"name": "t", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}], "outputs": [{"name": HUGE}]},
    {"inputs": [{"name": "t", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}], "id": HUGE, "x": "\ud800"},
    {"inputs": [{"name": "t", "datatype": "UINT8", "shape": [1, 2], "data": [1, BIG_NUMBER]}]},
])
def test_error_messages_stay_short_whatever_the_client_sent(body):
    text = json.dumps(body).replace(f'"{BIG_NUMBER}"', BIG_NUMBER).encode()  # a 4,000-digit JSON integer
    request_signature = PENGUINS
    with pytest.raises(RequestError) as info:
        request = v2_codec.decode_request({}, text, ("predict",))
        RowEncoder(request_signature, reject_unseen=True).matrix(v2_codec.rows(request, request_signature), 10)
    assert len(str(info.value)) < 1000, str(info.value)[:300]


@pytest.mark.parametrize("body, received", [
    (tensor([10 ** 308, 30], ROW), 1),
    (tensor([10 ** 18, 30], [ROW, ROW]), 2),
    (tensor([10 ** 400, 30], ROW), 1),
    (tensor("30", ROW), 30),
    ({"inputs": "x"}, 0),
    (tensor([5, 30], ROW[:29]), 1),
    (tensor([3], ROW[:3], name="mean radius"), 3),
    ([1, 2], 0),
])
def test_received_rows_are_what_the_body_holds_not_what_it_claims(body, received):
    assert v2_codec.received_rows({}, json.dumps(body).encode()) == received


@pytest.mark.parametrize("datatype, received", [("FP64", 2), ("BYTES", 4), (["FP64"], 4), ({"a": 1}, 4), (None, 4)])
def test_received_rows_of_binary_requests_count_the_body(datatype, received):
    headers, body = binary({"inputs": [{"name": "input-0", "shape": [10 ** 18, 30], "datatype": datatype,
                                        "parameters": {"binary_data_size": 480}}]}, np.ones(60).tobytes())
    assert v2_codec.received_rows(headers, body) == received


# ---- what decodes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64", "UINT8"])
def test_one_tensor_json_and_binary_decode_to_the_same_rows(datatype):
    values = np.arange(60).reshape(2, 30) % 7
    dtype = np.dtype(v2_codec.NUMERIC[datatype]).newbyteorder("<")
    flat = tensor([2, 30], values.ravel().tolist(), datatype)
    nested = tensor([2, 30], values.tolist(), datatype)
    headers, body = binary({"inputs": [{"name": "input-0", "shape": [2, 30], "datatype": datatype,
                                        "parameters": {"binary_data_size": 60 * dtype.itemsize}}]},
                           values.astype(dtype).tobytes())
    for rows in (encoded(flat), encoded(nested), encoded(body, headers=headers)):
        np.testing.assert_array_equal(rows, values.astype(float))


def test_numbers_without_nulls_decode_to_an_array_and_with_nulls_to_lists():
    """An array skips Python floats on the way to the matrix; a null keeps the row path, which says
    which feature may not be missing."""
    values = np.arange(60.0).reshape(2, 30)
    headers, body = binary({"inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP32",
                                        "parameters": {"binary_data_size": 240}}]}, values.astype("<f4").tobytes())
    for head, raw in ((headers, body), ({}, json.dumps(tensor([2, 30], values.ravel().tolist())).encode())):
        decoded = v2_codec.rows(v2_codec.decode_request(head, raw, OUTPUTS), CANCER)
        assert isinstance(decoded, np.ndarray) and decoded.shape == (2, 30)
        np.testing.assert_array_equal(decoded, values)
    with_null = [None, *values.ravel().tolist()[1:]]
    decoded = v2_codec.rows(v2_codec.decode_request({}, json.dumps(tensor([2, 30], with_null)).encode(), OUTPUTS),
                            CANCER)
    assert decoded[0][0] is None and decoded[1] == values[1].tolist()


def test_integer_tensors_reach_categories_and_errors_as_sent():
    """Integers stay integers on the way to a category lookup (2**53 + 1 is not a float64) and to an
    error message (a boolean feature sent 2 says 2, not 2.0)."""
    codes = Signature([Feature("code", "category", "int64", False, [2**53, 2**53 + 1]), Feature("flag", "boolean")],
                      takes_frame=True)
    row = np.array([[2**53 + 1, 1]], dtype="<i8")
    headers, body = binary({"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "INT64",
                                        "parameters": {"binary_data_size": 16}}]}, row.tobytes())
    for sent, head in ((json.dumps(tensor([1, 2], row.ravel().tolist(), "INT64")).encode(), None), (body, headers)):
        np.testing.assert_array_equal(encoded(sent, codes, head), [[1.0, 1.0]])
    with pytest.raises(RequestError, match=r"feature 'flag' must be true or false, got a number \(2\)"):
        encoded(tensor([1, 2], [2**53, 2], "INT64"), codes)


def test_by_feature_inputs_take_bytes_and_leave_out_features_that_may_be_missing():
    text_bytes = b"".join(len(v).to_bytes(4, "little") + v for v in (b"Dream", b"Biscoe"))
    headers, body = binary({"inputs": [{"name": "island", "shape": [2, 1], "datatype": "BYTES",
                                        "parameters": {"binary_data_size": len(text_bytes)}}],
                            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]}, text_bytes)
    request = v2_codec.decode_request(headers, body, OUTPUTS)
    assert v2_codec.rows(request, PENGUINS) == [["Dream", None], ["Biscoe", None]]
    assert request.outputs == {"predict": True}
    with pytest.raises(RequestError, match="missing input\\(s\\) for feature\\(s\\) \\['island'\\]"):
        v2_codec.rows(v2_codec.decode_request({}, json.dumps(tensor([1], [1.0], name="bill")).encode(), OUTPUTS),
                      PENGUINS)


@pytest.mark.parametrize("asked, expected", [
    (None, {"predict": False, "predict_proba": False}),
    ([], {"predict": False, "predict_proba": False}),
    ([{"name": "predict_proba"}], {"predict_proba": False}),
    ([{"name": "predict", "parameters": {"binary_data": True}}], {"predict": True}),
    ([{"name": "predict", "parameters": None}], {"predict": False}),
])
def test_outputs_asked_for(asked, expected):
    request = v2_codec.decode_request({}, json.dumps(tensor([1, 30], ROW, outputs=asked)).encode(), OUTPUTS)
    assert request.outputs == expected


def test_binary_data_output_asks_every_output_in_binary():
    body = json.dumps(tensor([1, 30], ROW, parameters={"binary_data_output": True})).encode()
    assert v2_codec.decode_request({}, body, OUTPUTS).outputs == {"predict": True, "predict_proba": True}


# ---- answers ---------------------------------------------------------------------------------------

def decode_answer(content: bytes, headers: dict) -> dict:
    """An answer as a client reads it: the JSON part, binary tensors turned back into data."""
    length = int(headers.get(v2_codec.HEADER_LENGTH, len(content)))
    answer, raw = json.loads(content[:length]), content[length:]
    for output in answer["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            chunk, raw = raw[:size], raw[size:]
            if output["datatype"] == "BYTES":
                output["data"] = v2_codec._bytes_elements(chunk, int(np.prod(output["shape"])), "")
            else:
                output["data"] = np.frombuffer(chunk, np.dtype(v2_codec.NUMERIC[output["datatype"]])
                                               .newbyteorder("<")).tolist()
    assert raw == b""
    return answer


@pytest.mark.parametrize("as_binary", [False, True])
@pytest.mark.parametrize("labels, datatype", [(None, "FP64"), (["setosa", "versicolor"], "BYTES"), ([0.0, 1.0], "FP64"),
                                              ([False, True], "BOOL")])
def test_answers_read_back_as_sent(as_binary, labels, datatype):
    proba = np.array([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])
    predictions = [1.5, -2.0, 3.25] if labels is None else [labels[1], labels[0], labels[0]]
    outputs = {"predict": as_binary} if labels is None else {"predict": as_binary, "predict_proba": as_binary}
    tensors = v2_codec.output_tensors(outputs, predictions, {"predict_proba": proba} if labels else {}, labels)
    content, headers = v2_codec.encode_response("m", "v1", "req-7", tensors)
    assert (v2_codec.HEADER_LENGTH in headers) == as_binary
    answer = decode_answer(content, headers)
    assert answer["model_name"] == "m" and answer["model_version"] == "v1" and answer["id"] == "req-7"
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert by_name["predict"]["data"] == predictions and by_name["predict"]["shape"] == [3]
    assert by_name["predict"]["datatype"] == datatype
    if labels:
        assert by_name["predict_proba"]["shape"] == [3, 2] and by_name["predict_proba"]["data"] == proba.ravel().tolist()


def test_model_inputs_and_outputs_describe_the_signature():
    assert v2_codec.model_inputs(CANCER) == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    assert v2_codec.model_inputs(PENGUINS) == [{"name": "island", "datatype": "BYTES", "shape": [-1]},
                                               {"name": "bill", "datatype": "FP64", "shape": [-1]}]
    assert v2_codec.model_outputs(OUTPUTS, ["a", "b", "c"]) == [
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}]
