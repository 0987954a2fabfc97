"""The Open Inference Protocol's gRPC messages (open_inference_grpc.proto) to and from v2_codec's terms, pure.

A ModelInferRequest's inputs carry their values either all in `raw_input_contents`
(one bytes entry per input, laid out as the REST binary extension lays them out:
tritonclient's only form) or each in its typed `contents` field (`fp64_contents`,
`bytes_contents`, ...). Each input becomes the dict a REST request would hold and
is read by v2_codec.read_input, so both protocols check tensors alike and refuse
alike, with the same messages.

Outputs go back raw (`raw_output_contents`) or typed, never mixed (the i-th raw entry
is the i-th output's): as asked by a `binary_data` parameter (per output, or
`binary_data_output` for the request), else in the form the inputs came in.
"""

from __future__ import annotations

import math
import typing as t

import numpy as np

from sklearn_service import v2_codec
from sklearn_service.errors import RequestError
from sklearn_service.user_input import shown
from sklearn_service.v2_grpc import open_inference_grpc_pb2 as pb

# the typed contents field of each datatype (FP16 has none: raw only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
FIELDS = tuple(dict.fromkeys(CONTENTS.values()))


def parameter(value: pb.InferParameter):
    """An InferParameter's value (bool, int, str or float), None when unset."""
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def parameters(mapping) -> dict:
    return {key: parameter(value) for key, value in mapping.items()}


def decode_request(request: pb.ModelInferRequest, outputs: t.Sequence[str],
                   named_only: t.Sequence[str] = ()) -> tuple[v2_codec.InferRequest, bool]:
    """The request's id, input tensors and asked outputs (of `outputs`, the model's, or `named_only`
    when named), and whether the answer goes back raw."""
    if not request.inputs:
        raise RequestError("invalid_request", "inputs must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError("bad_binary_data", f"raw_input_contents holds {len(raw)} entries for "
                                              f"{len(request.inputs)} inputs: send every input raw or none")
    tensors = [_read_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs)]
    asked = [{"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs]
    request_parameters = parameters(request.parameters)
    chosen = v2_codec.requested_outputs(asked, request_parameters, outputs, named_only)  # names checked as REST does
    wanted = [o["parameters"]["binary_data"] for o in asked if isinstance(o["parameters"].get("binary_data"), bool)]
    binary = request_parameters.get("binary_data_output")
    raw_answer = binary if isinstance(binary, bool) else any(wanted) if wanted else bool(raw)
    return v2_codec.InferRequest(request.id or None, tensors, dict.fromkeys(chosen, raw_answer)), raw_answer


def _read_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> v2_codec.Tensor:
    spec: dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    if raw is not None:
        spec["parameters"] = {"binary_data_size": len(raw)}
        return v2_codec.read_input(spec, v2_codec.Binary(raw))
    spec["data"] = _typed_values(tensor)
    return v2_codec.read_input(spec, v2_codec.Binary(b""))


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor) -> list:
    """The values of the contents field that the datatype names; values elsewhere are refused."""
    contents, field = tensor.contents, CONTENTS.get(tensor.datatype)
    misplaced = [name for name in FIELDS if name != field and len(getattr(contents, name))]
    if misplaced and field is not None:  # an unknown datatype is refused by read_input, naming it
        raise RequestError("wrong_datatype", f"input {shown(tensor.name)}: {tensor.datatype} values go "
                                             f"in contents.{field}, got {', '.join(misplaced)}")
    if field is None:
        return []
    values = list(getattr(contents, field))
    if field != "bytes_contents":
        return values
    try:
        return [value.decode() for value in values]
    except UnicodeDecodeError:
        index = next(i for i, v in enumerate(values) if not _utf8(v))
        raise RequestError("wrong_datatype", f"input {shown(tensor.name)}: BYTES element {index} is "
                                             "not UTF-8 text") from None


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def received_rows(request: pb.ModelInferRequest) -> int:
    """Rows a refused request carried, for its metrics: the values its first input holds per row
    of its shape, never more than its shape says; 0 when unreadable."""
    if not request.inputs:
        return 0
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    if not 1 <= len(shape) <= 2 or not all(0 <= d for d in shape):
        return 0
    width = shape[1] if len(shape) == 2 and shape[1] > 0 else 1
    if request.raw_input_contents:
        item = np.dtype(v2_codec.NUMERIC[tensor.datatype]).itemsize if tensor.datatype in v2_codec.NUMERIC else 4
        values = len(request.raw_input_contents[0]) // item
    else:
        values = max(len(getattr(tensor.contents, name)) for name in FIELDS)
    return min(shape[0], math.ceil(values / width))


def encode_response(model_name: str, version: str, request_id: str | None, outputs: list[v2_codec.OutputTensor],
                    raw: bool) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id or "")
    for output in outputs:
        tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw:
            response.raw_output_contents.append(v2_codec.tensor_bytes(output))
        elif output.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(str(v).encode() for v in output.data)
        else:
            getattr(tensor.contents, CONTENTS[output.datatype]).extend(output.data)
    return response


def tensor_metadata(tensors: list[dict]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in tensors]
