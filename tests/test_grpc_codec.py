"""The gRPC messages in-process (grpc_codec): raw and typed contents read as REST reads JSON and binary
tensors, every refusal with the REST message for the same mistake, and answers raw or typed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sklearn_service import grpc_codec, v2_codec
from sklearn_service.errors import RequestError
from sklearn_service.v2_grpc import open_inference_grpc_pb2 as pb
from sklearn_service.validation import RowEncoder
from harness.hostile import HOSTILE
from harness.v2_cases import CANCER, OUTPUTS, PENGUINS, ROW

DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_}


def request(shape, values, datatype="FP64", name="input-0", raw=False, **fields) -> pb.ModelInferRequest:
    """One input tensor, its values typed in contents or raw (as tritonclient sends them)."""
    message = pb.ModelInferRequest(model_name="m", **fields)
    tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw:
        message.raw_input_contents.append(values if isinstance(values, bytes) else
                                          np.asarray(values, dtype=DTYPES[datatype]).tobytes())
    else:
        field = grpc_codec.CONTENTS[datatype]
        getattr(tensor.contents, field).extend([v.encode() for v in values] if datatype == "BYTES" else values)
    return message


def rows_of(message: pb.ModelInferRequest, signature=CANCER) -> np.ndarray:
    inference, _ = grpc_codec.decode_request(message, OUTPUTS)
    return RowEncoder(signature).matrix(v2_codec.rows(inference, signature), 1000)


def refusal(call) -> RequestError:
    with pytest.raises(RequestError) as refused:
        call()
    return refused.value


def rest_refusal(body: dict) -> RequestError:
    """What REST answers for the same mistake in a JSON body."""
    def call():
        inference = v2_codec.decode_request({}, json.dumps(body).encode(), OUTPUTS)
        RowEncoder(CANCER).matrix(v2_codec.rows(inference, CANCER), 1000)
    return refusal(call)


def json_tensor(shape, data, datatype="FP64", name="input-0", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64", "UINT8"])
@pytest.mark.parametrize("raw", [False, True])
def test_raw_and_typed_contents_decode_as_rest_json(datatype, raw):
    values = (np.arange(60) % 7 + 1).astype(DTYPES[datatype])
    message = request([2, 30], values.tolist(), datatype, raw=raw)
    rest = v2_codec.decode_request({}, json.dumps(json_tensor([2, 30], values.tolist(), datatype)).encode(), OUTPUTS)
    expected = RowEncoder(CANCER).matrix(v2_codec.rows(rest, CANCER), 1000)
    assert np.array_equal(rows_of(message), expected)


# The same mistake over gRPC (typed and raw) and over REST (JSON) gets the same message.
@pytest.mark.parametrize("shape, values, datatype, body", [
    ([1, 29], [1.0] * 29, "FP64", json_tensor([1, 29], [1.0] * 29)),
    ([2, 30], ROW, "FP64", json_tensor([2, 30], ROW)),
    ([1, 30, 1], ROW, "FP64", json_tensor([1, 30, 1], ROW)),
    ([-1, 30], ROW, "FP64", json_tensor([-1, 30], ROW)),
    ([10 ** 12, 30], ROW, "FP64", json_tensor([10 ** 12, 30], ROW)),
    ([1, 30], [300] * 30, "UINT8", json_tensor([1, 30], [300] * 30, "UINT8")),
    ([1, 30], [True] * 30, "BOOL", json_tensor([1, 30], [True] * 30, "BOOL")),
    ([1, 30], [1e300] * 30, "FP32", json_tensor([1, 30], [1e300] * 30, "FP32")),
    ([1, 30], ["x"] * 30, "BYTES", json_tensor([1, 30], ["x"] * 30, "BYTES")),
    ([0, 30], [], "FP64", json_tensor([0, 30], [])),
    ([1, 30], [float("nan")] * 30, "FP64", None),
], ids=lambda v: str(v)[:20])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_bad_tensors_are_refused_with_the_rest_message(shape, values, datatype, body):
    typed = refusal(lambda: rows_of(request(shape, values, datatype)))
    assert typed.status == 400
    if body is not None:
        expected = rest_refusal(body)
        assert (typed.reason, str(typed)) == (expected.reason, str(expected))
    if datatype in ("FP64", "FP32", "BOOL"):  # raw, against REST's binary extension with the same bytes
        data = np.asarray(values, dtype=DTYPES[datatype]).tobytes()
        raw = refusal(lambda: rows_of(request(shape, data, datatype, raw=True)))
        header = json.dumps({"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype,
                                         "parameters": {"binary_data_size": len(data)}}]}).encode()
        expected = refusal(lambda: RowEncoder(CANCER).matrix(v2_codec.rows(v2_codec.decode_request(
            {v2_codec.HEADER_LENGTH: str(len(header))}, header + data, OUTPUTS), CANCER), 1000))
        assert raw.status == 400 and (raw.reason, str(raw)) == (expected.reason, str(expected))


@pytest.mark.parametrize("change, body", [
    (lambda m: m.outputs.add(name="classes"), json_tensor([1, 30], ROW, outputs=[{"name": "classes"}])),
    (lambda m: m.inputs.add().CopyFrom(m.inputs[0]),
     {"inputs": json_tensor([1, 30], ROW)["inputs"] * 2}),
    (lambda m: m.ClearField("inputs"), {"inputs": []}),
    (lambda m: m.inputs[0].__setattr__("datatype", "FP128"), json_tensor([1, 30], ROW, "FP128")),
], ids=["unknown output", "two tensors", "no inputs", "unknown datatype"])
def test_bad_requests_are_refused_with_the_rest_message(change, body):
    message = request([1, 30], ROW)
    change(message)
    grpc_error, rest_error = refusal(lambda: rows_of(message)), rest_refusal(body)
    assert (grpc_error.reason, str(grpc_error)) == (rest_error.reason, str(rest_error))


def test_by_feature_inputs_missing_a_feature_as_rest():
    message = request([1], [1.0], name="mean radius")
    expected = rest_refusal(json_tensor([1], [1.0], name="mean radius"))
    assert str(refusal(lambda: rows_of(message))) == str(expected)


@pytest.mark.parametrize("build, words", [
    (lambda: pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="a", datatype="FP64",
                                                                                 shape=[1, 30])] * 2,
                                  raw_input_contents=[np.ones(30).tobytes()]),
     "raw_input_contents holds 1 entries for 2 inputs"),
    (lambda: request([1, 30], np.ones(29).tobytes(), raw=True), "232 bytes of FP64 data, its shape needs 30 x 8"),
    (lambda: request([1, 30], (100).to_bytes(4, "little") + b"abcd", "BYTES", raw=True),
     "BYTES element 0 runs past its data"),
    (lambda: _not_utf8(), "input 'input-0': BYTES element 3 is not UTF-8 text"),
    (lambda: _misplaced(), "FP64 values go in contents.fp64_contents, got fp32_contents"),
], ids=["raw count", "raw length", "raw bytes element", "typed bytes utf8", "wrong field"])
def test_grpc_only_mistakes_are_400_naming_the_problem(build, words):
    error = refusal(lambda: rows_of(build()))
    assert error.status == 400 and words in str(error), str(error)


def _not_utf8() -> pb.ModelInferRequest:
    message = request([1, 30], ["x"] * 30, "BYTES")
    message.inputs[0].contents.bytes_contents[3] = b"\xff"
    return message


def _misplaced() -> pb.ModelInferRequest:
    message = request([1, 30], ROW)
    message.inputs[0].contents.fp32_contents.extend([1.0])
    return message


@pytest.mark.parametrize("raw_inputs, request_parameter, output_parameter, raw", [
    (True, None, None, True),      # tritonclient: raw in, raw out (the only form it reads)
    (False, None, None, False),    # typed in, typed out
    (False, True, None, True),
    (True, False, None, False),
    (False, None, True, True),     # binary_data on an output
    (True, None, False, False),
])
def test_answers_come_raw_or_typed(raw_inputs, request_parameter, output_parameter, raw):
    message = request([1, 30], ROW, raw=raw_inputs)
    if request_parameter is not None:
        message.parameters["binary_data_output"].bool_param = request_parameter
    output = message.outputs.add(name="predict")
    if output_parameter is not None:
        output.parameters["binary_data"].bool_param = output_parameter
    inference, answered_raw = grpc_codec.decode_request(message, OUTPUTS)
    assert answered_raw is raw and list(inference.outputs) == ["predict"]


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("labels, datatype", [(None, "FP64"), (["Adelie", "Gentoo"], "BYTES"), ([False, True], "BOOL")])
def test_answers_read_back_as_sent(raw, labels, datatype):
    predictions = [1.5, -2.0] if labels is None else labels
    proba = np.array([[0.25, 0.75], [1.0, 0.0]])
    tensors = v2_codec.output_tensors({"predict": raw, "predict_proba": raw}, predictions, {"predict_proba": proba},
                                      labels or [0, 1])
    answer = pb.ModelInferResponse.FromString(
        grpc_codec.encode_response("m", "v1", "7", tensors, raw).SerializeToString())
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "v1", "7")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("predict", datatype, [2]), ("predict_proba", "FP64", [2, 2])]
    if raw:  # as tritonclient reads them: the i-th raw entry is the i-th output's
        assert len(answer.raw_output_contents) == 2
        assert np.frombuffer(answer.raw_output_contents[1], "<f8").tolist() == proba.ravel().tolist()
        first = answer.raw_output_contents[0]
        if datatype == "BYTES":
            assert first == b"".join(len(v).to_bytes(4, "little") + v.encode() for v in labels)
        else:
            assert np.frombuffer(first, "<f8" if datatype == "FP64" else "?").tolist() == predictions
    else:
        assert not answer.raw_output_contents
        contents = answer.outputs[0].contents
        read = ([v.decode() for v in contents.bytes_contents] if datatype == "BYTES" else
                list(contents.bool_contents) if datatype == "BOOL" else list(contents.fp64_contents))
        assert read == predictions and list(answer.outputs[1].contents.fp64_contents) == proba.ravel().tolist()


@pytest.mark.parametrize("raw", [False, True])
def test_mixed_model_by_feature_with_bytes(raw):
    message = pb.ModelInferRequest(model_name="m")
    columns = {"island": ("BYTES", ["Dream", "Biscoe"]), "bill": ("FP64", [50.1, 40.0])}
    for name, (datatype, values) in columns.items():
        tensor = message.inputs.add(name=name, datatype=datatype, shape=[2])
        if raw:
            message.raw_input_contents.append(
                v2_codec.tensor_bytes(v2_codec.OutputTensor(name, datatype, [2], values)))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        else:
            tensor.contents.fp64_contents.extend(values)
    inference, _ = grpc_codec.decode_request(message, OUTPUTS)
    assert v2_codec.rows(inference, PENGUINS) == [["Dream", 50.1], ["Biscoe", 40.0]]


@pytest.mark.parametrize("message, received", [
    (request([10 ** 18, 30], ROW), 1),
    (request([10 ** 18, 30], ROW * 2, raw=True), 2),
    (request([5, 30], ROW[:29]), 1),
    (request([3], ROW[:3], name="mean radius"), 3),
    (request([-1, 30], ROW), 0),
    (pb.ModelInferRequest(), 0),
], ids=lambda v: str(v)[:1])
def test_received_rows_are_what_the_message_holds_not_what_it_claims(message, received):
    assert grpc_codec.received_rows(message) == received


def test_parameters_read_each_kind():
    message = pb.ModelInferRequest()
    message.parameters["a"].bool_param = True
    message.parameters["b"].int64_param = 7
    message.parameters["c"].string_param = "x"
    message.parameters["d"].double_param = 0.5
    message.parameters["e"].Clear()  # set, with no value chosen
    assert grpc_codec.parameters(message.parameters) == {"a": True, "b": 7, "c": "x", "d": 0.5, "e": None}


INT64 = st.integers(-2**63, 2**63 - 1)
CONTENT_VALUES = {"bool_contents": st.booleans(), "int_contents": st.integers(-2**31, 2**31 - 1),
                  "int64_contents": INT64, "uint_contents": st.integers(0, 2**32 - 1),
                  "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32),
                  "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=8)}


@st.composite
def any_message(draw) -> pb.ModelInferRequest:
    """Any request the wire can carry: any datatype string, int64 shape, raw bytes or typed values."""
    message = pb.ModelInferRequest(model_name="m")
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        tensor = message.inputs.add(
            name=draw(st.sampled_from(["input-0", "mean radius", "mean texture", "x"])),
            datatype=draw(st.sampled_from([*v2_codec.DATATYPES, "FP128", ""])),
            shape=draw(st.lists(st.one_of(st.integers(-2, 70), INT64), max_size=3)))
        if raw:
            message.raw_input_contents.append(draw(st.binary(max_size=600)))
        else:
            field = draw(st.sampled_from(sorted(CONTENT_VALUES)))
            getattr(tensor.contents, field).extend(draw(st.lists(CONTENT_VALUES[field], max_size=70)))
    if draw(st.booleans()):
        message.raw_input_contents.append(b"extra")
    for name in draw(st.lists(st.sampled_from(["predict", "predict_proba", "classes"]), max_size=2)):
        message.outputs.add(name=name).parameters["binary_data"].int64_param = 1
    return message


@HOSTILE
@given(message=any_message())
def test_any_message_is_rows_or_a_clear_refusal(message):
    try:
        rows = rows_of(message)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and len(str(exc)) < 1000
    else:
        assert rows.shape[1] == 30
    assert grpc_codec.received_rows(message) >= 0


@pytest.mark.parametrize("inputs", [
    [("island", "BYTES", [2], ["Dream", "Biscoe"]), ("bill", "FP64", [1], [40.0])],           # uneven rows
    [("island", "BYTES", [1], ["Dream"]), ("island", "BYTES", [1], ["Dream"])],                # twice
    [("island", "BYTES", [1], ["Dream"]), ("beak", "FP64", [1], [1.0])],                      # not a feature
    [("island", "BYTES", [1, 2], ["Dream", "Dream"]), ("bill", "FP64", [1], [1.0])],          # [N, 2]
    [("bill", "FP64", [1], [40.0])],                                                          # island missing
    [("island", "FP64", [1], [1.0]), ("bill", "FP64", [1], [40.0])],                          # not a category
    [("island", "BYTES", [1], ["Atlantis"]), ("bill", "BYTES", [1], ["long"])],               # a string for a number
], ids=["uneven", "twice", "unknown", "wide", "missing", "category", "number"])
def test_by_feature_mistakes_get_the_rest_message(inputs):
    message = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, values in inputs:
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        field = getattr(tensor.contents, grpc_codec.CONTENTS[datatype])
        field.extend([v.encode() for v in values] if datatype == "BYTES" else values)
    body = {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs]}

    def refused(decode):
        def call():
            inference = decode()
            RowEncoder(PENGUINS, reject_unseen=True).matrix(v2_codec.rows(inference, PENGUINS), 1000)
        return refusal(call)

    grpc_error = refused(lambda: grpc_codec.decode_request(message, OUTPUTS)[0])
    rest_error = refused(lambda: v2_codec.decode_request({}, json.dumps(body).encode(), OUTPUTS))
    assert grpc_error.status == 400 and (grpc_error.reason, str(grpc_error)) == (rest_error.reason, str(rest_error))
