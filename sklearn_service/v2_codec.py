"""The Open Inference Protocol's ("V2" of KServe, Triton and Seldon MLServer) wire format, pure.

JSON and binary tensors to an `InferRequest` and rows in signature order; an
answer's tensors back to bytes; a model's inputs and outputs in the protocol's
terms. No server here: every refusal is a RequestError naming the problem,
and the module is tested in-process (tests/test_v2_codec.py).

A request carries either one [N, F] tensor of feature values in signature
order, or one [N] (or [N, 1]) tensor per feature named as in the signature (the
"pandas codec" style of MLServer's and KServe's clients, BYTES for strings).

Triton's binary tensor extension, which tritonclient uses by default: the body is
a JSON header `Inference-Header-Content-Length` bytes long followed by the raw
tensors, each input's `parameters.binary_data_size` bytes; outputs come back the
same way when asked for with `binary_data` (per output) or `binary_data_output`
(whole request). BYTES elements are a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import json
import math
import re
import typing as t
from dataclasses import dataclass

import numpy as np

from sklearn_service.errors import RequestError
from sklearn_service.signature import Signature
from sklearn_service.user_input import shown, shown_list

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMERIC = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
           "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
           "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
DATATYPES = [*NUMERIC, "BYTES"]
NONE = type(None)
# JSON values each datatype takes; null is a missing value (validation decides whether that is allowed)
JSON_TYPES: dict[str, set[type]] = {**{d: {int, NONE} for d in NUMERIC if "INT" in d},
                                     "BOOL": {bool, NONE}, "BYTES": {str, NONE}, "FP16": {int, float, NONE},
                                     "FP32": {int, float, NONE}, "FP64": {int, float, NONE}}
TENSOR_NAME = "input-0"  # what metadata calls the [N, F] tensor; any name not a feature's is taken
FEATURE_DATATYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL"}


def _datatype(values: list) -> str:
    """The datatype a list of labels travels as: strings as BYTES, booleans as BOOL, numbers as FP64."""
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    return "FP64" if all(isinstance(v, (int, float)) for v in values) else "BYTES"


# ---- reading a request ------------------------------------------------------------------------

@dataclass
class Tensor:
    name: str
    shape: list[int]
    data: list | np.ndarray  # as read, flat: numbers without nulls as an ndarray of their datatype

    @property
    def values(self) -> list:
        return self.data.tolist() if isinstance(self.data, np.ndarray) else self.data

    @property
    def numbers(self) -> np.ndarray | None:
        """The values as an array of their datatype when they are all numbers (not booleans): rows
        that skip Python numbers on their way to the runner's matrix (validation.RowEncoder.matrix)."""
        if isinstance(self.data, np.ndarray) and self.data.dtype.kind in "iuf":
            return self.data
        return None


class Binary:
    """The raw bytes after the JSON header, handed out in input order."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def take(self, size, where: str) -> bytes:
        left = len(self.data) - self.offset
        if type(size) is not int or not 0 <= size <= left:
            raise RequestError("bad_binary_data", f"{where}binary_data_size must be a whole number of bytes "
                                                  f"that the body still holds ({left}), got {_excerpt(repr(size))}")
        self.offset += size
        return self.data[self.offset - size:self.offset]

    def check_used(self) -> None:
        if self.offset != len(self.data):
            raise RequestError("bad_binary_data", f"{len(self.data) - self.offset} bytes after the JSON header "
                                                  "belong to no input's binary_data_size")


# Every integer a client sends is bounded before it is used: shape dimensions are the
# protocol's int64 (JSON integers only: not true/false, not 1.0); byte counts never exceed the
# body; lengths in headers are ASCII digits (str.isdigit() also takes "²" and "١٢").
MAX_DIMENSION = 2**63 - 1


def _dimension(value) -> bool:
    return type(value) is int and 0 <= value <= MAX_DIMENSION


def ascii_int(text: str, limit: int) -> int | None:
    """`text` as a whole number 0..limit when it is only ASCII digits (at most 19 of them), else None."""
    if not 0 < len(text) <= 19 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= limit else None


def _excerpt(value) -> str:
    """A client's value, shortened for an error message (a 400-digit number is not repeated back)."""
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def split_body(headers, body: bytes) -> tuple[dict, Binary]:
    """The JSON document and the binary tensor data after it (none without the header)."""
    length = headers.get(HEADER_LENGTH)
    if length is not None:
        size = ascii_int(length, len(body))
        if size is None:
            raise RequestError("bad_binary_data", f"{HEADER_LENGTH} must be the JSON header's length within "
                                                  f"the {len(body)}-byte body, got {length[:40]!r}")
        body, binary = body[:size], body[size:]
    else:
        binary = b""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError("invalid_json", f"the request is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise RequestError("invalid_request", "the request must be a JSON object with `inputs`")
    # JSON's \\uXXXX escapes can spell a lone surrogate, which UTF-8 cannot encode: the id (echoed
    # back), a name or a BYTES value would fail only after predicting. Only such a body is walked.
    try:
        where = _unencodable(document) if LONE_SURROGATE.search(body) else None
    except RecursionError:
        raise RequestError("invalid_request", "the request is nested too deeply") from None
    if where is not None:
        raise RequestError("invalid_request", f"{where} holds a lone surrogate escape (such as \\ud800) "
                                              "that is not text UTF-8 can encode")
    return document, Binary(binary)


LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # any surrogate escape; a paired one passes the walk


def _unencodable(node, where: str = "the request") -> str | None:
    """Where in the parsed document a string (or key) is not encodable as UTF-8, or None."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{where}[{_excerpt(repr(key))}]" if isinstance(key, str) else f"{where}[{key}]"
        for text in (key, value):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return "a key of " + where if text is key else here
        if (found := _unencodable(value, here)) is not None:
            return found
    return None


def _parameters(spec: dict, where: str) -> dict:
    parameters = spec.get("parameters")
    if parameters is None:  # null is absent, as everywhere in a request
        return {}
    if not isinstance(parameters, dict):
        raise RequestError("invalid_request", f"{where}parameters must be an object")
    return parameters


def read_input(spec, binary: Binary) -> Tensor:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise RequestError("invalid_request", "each of `inputs` must be an object with a string `name`")
    where = f"input {shown(spec['name'])}: "
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in DATATYPES:
        raise RequestError("wrong_datatype", f"{where}unknown datatype {shown(datatype)}; "
                                             f"one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(_dimension(d) for d in shape):
        raise RequestError("wrong_shape", f"{where}shape must be [N, features] or [N] with whole numbers "
                                          f"0 to {MAX_DIMENSION}, got {_excerpt(shape)}")
    count = math.prod(shape)
    size = _parameters(spec, where).get("binary_data_size")
    if size is not None:
        values = _from_binary(binary.take(size, where), datatype, count, where)
    else:
        values = _from_json(spec.get("data"), datatype, len(shape), count, where)
    return Tensor(spec["name"], shape, values)


def _from_json(data, datatype: str, ndim: int, count: int, where: str) -> list | np.ndarray:
    if not isinstance(data, list):
        raise RequestError("wrong_data", f"{where}data must be a list (flat or nested as the shape), "
                                         f"got {type(data).__name__}")
    for _ in range(ndim - 1):  # nested rows, flattened in row-major order
        kinds = set(map(type, data))
        if list not in kinds:
            break
        if len(kinds) > 1:
            raise RequestError("wrong_data", f"{where}data mixes lists and values")
        data = [v for row in data for v in row]
    if len(data) != count:
        raise RequestError("wrong_shape", f"{where}data holds {len(data)} values, its shape needs {count}")
    allowed = JSON_TYPES[datatype]
    found = set(map(type, data))  # one pass in C; the value to name is looked for only when there is one
    if not found <= allowed:
        wrong = next(v for v in data if type(v) not in allowed)
        raise RequestError("wrong_datatype", f"{where}{datatype} data cannot hold {str(json.dumps(wrong))[:40]}")
    if datatype == "BYTES":
        return data
    present = [v for v in data if v is not None] if NONE in found else data
    try:  # as the declared type: FP32 rounds, out-of-range integers are refused
        array: np.ndarray = np.array(present, dtype=NUMERIC[datatype])
    except (OverflowError, ValueError) as exc:
        raise RequestError("wrong_datatype", f"{where}values do not fit {datatype}: {shown(exc, 200)}") from None
    if len(present) == len(data):
        return array
    cast = iter(array.tolist())
    return [None if v is None else next(cast) for v in data]


def _from_binary(raw: bytes, datatype: str, count: int, where: str) -> list | np.ndarray:
    if datatype == "BYTES":
        return _bytes_elements(raw, count, where)
    dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise RequestError("wrong_shape", f"{where}{len(raw)} bytes of {datatype} data, its shape needs "
                                          f"{count} x {dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype)


def _bytes_elements(raw: bytes, count: int, where: str) -> list[str]:
    values: list[str] = []
    offset = 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset:offset + 4], "little")
        if offset + 4 > len(raw) or offset + 4 + size > len(raw):
            raise RequestError("bad_binary_data", f"{where}BYTES element {len(values)} runs past its data")
        try:
            values.append(raw[offset + 4:offset + 4 + size].decode())
        except UnicodeDecodeError:
            raise RequestError("wrong_datatype", f"{where}BYTES element {len(values)} is not UTF-8 text") from None
        offset += 4 + size
    if len(values) != count:
        raise RequestError("wrong_shape", f"{where}{len(values)} BYTES elements, its shape needs {count}")
    return values


def _bytes_data(values: list) -> bytes:
    encoded = [str(v).encode() for v in values]
    return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)


def _received_rows(document: dict, binary: Binary) -> int:
    """Rows a request carried, for the metrics of a refused one: the values its first input
    actually holds (JSON data, or its share of the binary part) per row of its shape. Never
    more than the body holds, nor than a valid shape says; 0 when unreadable."""
    try:
        spec = document["inputs"][0]
        shape, data = spec.get("shape"), spec.get("data")
        size = spec.get("parameters", {}).get("binary_data_size")
    except (KeyError, IndexError, TypeError, AttributeError):
        return 0
    shape = shape if isinstance(shape, list) else []
    claimed = shape[0] if shape and _dimension(shape[0]) else MAX_DIMENSION
    width = shape[1] if len(shape) == 2 and _dimension(shape[1]) and shape[1] > 0 else 1
    if type(size) is int and size >= 0:  # BYTES elements (or an unknown datatype's): 4 bytes at least
        datatype = spec.get("datatype")
        item = np.dtype(NUMERIC[datatype]).itemsize if isinstance(datatype, str) and datatype in NUMERIC else 4
        rows = -(-(min(size, len(binary.data)) // item) // width)
    elif isinstance(data, list):  # nested: one list per row; flat: width values per row
        rows = len(data) if data and isinstance(data[0], list) else -(-len(data) // width)
    else:
        return 0
    return min(claimed, rows)


# ---- one inference request -------------------------------------------------------------------------

@dataclass
class InferRequest:
    id: str | None
    tensors: list[Tensor]
    outputs: dict[str, bool]  # output name -> whether it goes back as binary data


def decode_request(headers: t.Mapping[str, str], body: bytes, outputs: t.Sequence[str],
                   named_only: t.Sequence[str] = ()) -> InferRequest:
    """The request's id, input tensors and the outputs it asks for: of `outputs`, the model's (all of
    them when none are named), or of `named_only`, answered only when named (an explanation costs
    far more than a prediction, and clients that name no output expect the outputs they know)."""
    document, binary = split_body(headers, body)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("invalid_request", "id must be a string")
    chosen = requested_outputs(document.get("outputs"), _parameters(document, ""), outputs, named_only)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("invalid_request", "inputs must be a non-empty list of tensors")
    tensors = [read_input(spec, binary) for spec in inputs]
    binary.check_used()
    return InferRequest(request_id, tensors, chosen)


def requested_outputs(requested, parameters: dict, available: t.Sequence[str],
                      named_only: t.Sequence[str] = ()) -> dict[str, bool]:
    """The outputs asked for (all of `available` when none are named; `named_only` only when named),
    each with whether it goes back binary."""
    binary = parameters.get("binary_data_output") is True
    if requested is None or requested == []:  # the protocol: none named, every output
        return {name: binary for name in available}
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise RequestError("invalid_request", "outputs must be a list of objects with a `name`")
    chosen = {}
    for output in requested:
        if output.get("name") not in (*available, *named_only):
            raise RequestError("unknown_output", f"unknown output {str(output.get('name'))[:60]!r}; "
                                                 f"this model has: {', '.join(available)}")
        parameters = _parameters(output, f"output {output['name']!r}: ")
        chosen[output["name"]] = parameters.get("binary_data", binary) is True
    return chosen


def rows(request: InferRequest, signature: Signature) -> list[list] | np.ndarray:
    """The request's rows in signature order: from one [N, F] tensor, or from one tensor per feature
    (a feature that may be missing can be left out). One tensor of numbers without nulls is answered
    as an [N, F] array of its datatype, which validation checks in one pass."""
    names = set(signature.names)
    if any(tensor.name in names for tensor in request.tensors):
        return _by_feature(request.tensors, signature)
    return _one_tensor(request.tensors, len(signature.names))


def _one_tensor(tensors: list[Tensor], width: int) -> list[list] | np.ndarray:
    if len(tensors) != 1:
        raise RequestError("wrong_inputs", f"send one [N, {width}] tensor or one input per feature named as "
                                           f"the model's features; got {len(tensors)} inputs named "
                                           f"{shown_list([t.name for t in tensors], 5)}")
    tensor = tensors[0]
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise RequestError("wrong_shape", f"input {shown(tensor.name)}: shape must be [N, {width}] (rows, features), "
                                          f"got {tensor.shape}")
    numbers = tensor.numbers
    if numbers is not None:
        return numbers.reshape(-1, width)
    values = tensor.values
    return [values[i:i + width] for i in range(0, len(values), width)]


def _by_feature(tensors: list[Tensor], signature: Signature) -> list[list]:
    names = signature.names
    columns: dict[str, list] = {}
    for tensor in tensors:
        if tensor.name not in names:
            raise RequestError("unknown_feature", f"input {shown(tensor.name)} is not a feature of this model; "
                                                  f"features: {names[:10]}")
        if tensor.name in columns:
            raise RequestError("wrong_inputs", f"input {tensor.name!r} appears twice")
        if len(tensor.shape) == 2 and tensor.shape[1] != 1:
            raise RequestError("wrong_shape", f"input {tensor.name!r}: one feature's shape is [N] or [N, 1], "
                                              f"got {tensor.shape}")
        columns[tensor.name] = tensor.values
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise RequestError("wrong_shape", f"inputs hold different numbers of rows: {lengths}")
    missing = [f.name for f in signature.features if f.name not in columns and not f.nullable]
    if missing:
        raise RequestError("missing_feature", f"missing input(s) for feature(s) {missing[:5]}")
    count = next(iter(lengths.values()))
    absent = [None] * count  # features that may be missing and were left out
    return [list(row) for row in zip(*(columns.get(name, absent) for name in names))]


def received_rows(headers: t.Mapping[str, str], body: bytes) -> int:
    """Rows a request carried, for the metrics of one refused before its rows were read; 0 when
    unreadable."""
    try:
        document, binary = split_body(headers, body)
    except RequestError:
        return 0
    return _received_rows(document, binary)


# ---- answering --------------------------------------------------------------------------------------

@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list
    binary: bool = False


def encode_response(model_name: str, version: str, request_id: str | None,
                    outputs: list[OutputTensor]) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: JSON, or the JSON header and binary tensors after it."""
    answer: dict[str, t.Any] = {"model_name": model_name, "model_version": version, "outputs": []}
    if request_id is not None:
        answer["id"] = request_id
    chunks = []
    for output in outputs:
        tensor: dict[str, t.Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.binary:
            chunks.append(tensor_bytes(output))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = output.data
        answer["outputs"].append(tensor)
    header = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def tensor_bytes(output: OutputTensor) -> bytes:
    """An output's values as the protocol's raw bytes (little-endian; BYTES length-prefixed)."""
    if output.datatype == "BYTES":
        return _bytes_data(output.data)
    return np.asarray(output.data, dtype=np.dtype(NUMERIC[output.datatype]).newbyteorder("<")).tobytes()


def output_tensors(outputs: dict[str, bool], predictions: list, others: dict[str, np.ndarray],
                   labels: list | None) -> list[OutputTensor]:
    """The answer's tensors, in the order asked: `predictions` per row, `others` [N, k] per output."""
    datatypes = {o["name"]: o["datatype"] for o in model_outputs([*outputs, *others], labels)}
    tensors = []
    for name, binary in outputs.items():
        if name == "predict":
            shape, data = [len(predictions)], predictions
        else:
            values = others[name]
            shape = [len(values)] if values.shape[1] == 1 else list(values.shape)
            data = values.ravel().tolist()
        tensors.append(OutputTensor(name, datatypes[name], shape, data, binary))
    return tensors


# ---- metadata ---------------------------------------------------------------------------------------

def model_inputs(signature: Signature) -> list[dict]:
    """Numbers-only models: one [N, F] tensor; others: one input per feature (either form is taken)."""
    if signature.numeric_only:
        return [{"name": TENSOR_NAME, "datatype": "FP64", "shape": [-1, len(signature.features)]}]
    return [{"name": f.name, "datatype": _datatype(f.category_list) if f.is_category else FEATURE_DATATYPES[f.kind],
             "shape": [-1]} for f in signature.features]


def model_outputs(outputs: t.Sequence[str], labels: list | None, n_features: int = -1) -> list[dict]:
    """What the model answers: predict, then predict_proba (classifiers that have it) or
    score_samples (outlier detectors); explanation: per row, each feature's contribution."""
    shapes = {"predict": [-1], "predict_proba": [-1, len(labels or ())], "score_samples": [-1],
              "explanation": [-1, n_features]}
    return [{"name": name, "datatype": "FP64" if name != "predict" or labels is None
             else _datatype(labels), "shape": shapes[name]} for name in dict.fromkeys(outputs)]
