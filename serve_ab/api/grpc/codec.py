"""The Open Inference Protocol's gRPC messages, as the HTTP V2 codec reads and writes them.

A ``ModelInferRequest`` becomes what an HTTP V2 request with binary tensor data would be (a
JSON header and the raw tensor bytes after it, :class:`~serve_ab.api.v2_binary.V2Body`), so
one codec checks both transports' inputs and the messages say the same thing; the HTTP
answer (a JSON dict and its raw output bytes) becomes a ``ModelInferResponse``.

Values travel either raw (``raw_input_contents``: one little-endian, row-major entry per
input, BOOL one byte each) or typed (each input's ``contents``, in the repeated field of its
datatype). The answer travels the way the request came: raw for raw, typed for typed (FP16
and BF16, which have no typed field, raw either way).

No Ray. A request that does not add up is an :class:`~serve_ab.errors.InvalidInput` naming
the field (INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.schemas import shared_memory_refusal
from serve_ab.api.v2_binary import V2Body, tensor_from_bytes, tensor_to_bytes
from serve_ab.backends.base import MAX_DIMS, V2_DATATYPES
from serve_ab.errors import InvalidInput

#: The repeated field of ``InferTensorContents`` that carries each datatype's values.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(parameter: pb.InferParameter) -> Any:
    """The Python value of one ``InferParameter`` (None when none of its fields is set)."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def parameter_of(value: Any) -> pb.InferParameter:
    """An ``InferParameter`` holding ``value`` (a bool, an int, a float or a string)."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {name: parameter_value(p) for name, p in parameters.items()}


def infer_body(request: pb.ModelInferRequest) -> tuple[V2Body, bool]:
    """The request as the HTTP V2 route takes it, and whether its values came raw (then the
    answer asks for raw outputs too)."""
    # Before the values are looked for: an input in shared memory has none, and "no values" or
    # a count of raw_input_contents would hide why.
    for tensor in request.inputs:
        refusal = shared_memory_refusal(_parameters(tensor.parameters), f"input '{tensor.name[:80]}'")
        if refusal is not None:
            raise InvalidInput(refusal)
    raw = list(request.raw_input_contents)
    if raw:
        typed = [t.name for t in request.inputs if t.HasField("contents")]
        if typed:
            raise InvalidInput(f"input(s) {typed} have contents, but the request also has raw_input_contents; "
                               "send every input's values raw (one raw_input_contents entry per input) or "
                               "every input's in its contents, not both")
        if len(raw) != len(request.inputs):
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries, but the request lists "
                               f"{len(request.inputs)} input(s); send one entry per input, in the order of inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        if len(tensor.shape) > MAX_DIMS:  # before the raw size is worked out from it (int64s: bounded)
            raise InvalidInput(f"input '{tensor.name}' has {len(tensor.shape):,} dimensions; a tensor has at most "
                               f"{MAX_DIMS}")
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        parameters = _parameters(tensor.parameters)
        if raw:
            _check_raw_size(i, tensor, raw[i])
            parameters["binary_data_size"] = len(raw[i])
        else:
            entry["data"] = typed_values(tensor)
        if parameters:
            entry["parameters"] = parameters
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    parameters = _parameters(request.parameters)
    if raw:
        parameters["binary_data_output"] = True
    if parameters:
        header["parameters"] = parameters
    if request.outputs:
        header["outputs"] = [{"name": o.name, **({"parameters": _parameters(o.parameters)} if o.parameters else {})}
                             for o in request.outputs]
    return V2Body(header, b"".join(raw) if raw else None), bool(raw)


def typed_values(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    """An input's values from its ``contents``: the field of its datatype, and no other."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        if tensor.datatype in ("FP16", "BF16"):
            raise InvalidInput(f"input '{tensor.name}' is {tensor.datatype}, whose values travel only in "
                               "raw_input_contents (the protocol has no typed field for them)")
        return []  # an unknown datatype: the V2 check names it and the valid ones
    if not tensor.HasField("contents"):
        raise InvalidInput(f"input '{tensor.name}' has no values: send them in contents.{field} "
                           "or raw_input_contents")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(f"input '{tensor.name}' is {tensor.datatype}, whose values go in contents.{field}; "
                           f"got values in {', '.join('contents.' + o for o in others)}")
    return list(getattr(tensor.contents, field))


def _check_raw_size(index: int, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> None:
    # The V2 codec checks this too, in HTTP's words (binary_data_size); this says it in gRPC's.
    dtype = V2_DATATYPES.get(tensor.datatype)
    if dtype is None or any(d < 0 for d in tensor.shape):
        return  # the V2 check names the datatype or the negative dimension
    need = math.prod(tensor.shape) * dtype.itemsize
    if len(raw) != need:
        raise InvalidInput(f"raw_input_contents[{index}] (input '{tensor.name}') has {len(raw)} bytes, but "
                           f"shape {list(tensor.shape)} of {tensor.datatype} is {need} bytes "
                           f"({math.prod(tensor.shape)} values of {dtype.itemsize})")


def infer_response(response: Mapping[str, Any], tensors: bytes | None, *, raw: bool) -> pb.ModelInferResponse:
    """The HTTP V2 answer (its JSON and, with binary outputs, the raw bytes after it) as a
    ``ModelInferResponse``: raw outputs for a request whose inputs came raw (``raw``), else
    typed. BYTES outputs come as binary data either way (``V2Endpoints.infer``'s
    ``bytes_as_binary``), so that their bytes reach the client as the model made them."""
    message = pb.ModelInferResponse(model_name=response["model_name"], model_version=response["model_version"],
                                    id=response.get("id") or "")
    for name, value in (response.get("parameters") or {}).items():
        message.parameters[name].CopyFrom(parameter_of(value))
    # FP16 and BF16 have no typed field, so an answer holding one goes raw; so does one whose
    # typed request asked for binary outputs (a binary_data_output parameter).
    raw = raw or any(o["datatype"] not in CONTENTS_FIELD
                     or (o["datatype"] != "BYTES" and "binary_data_size" in (o.get("parameters") or {}))
                     for o in response["outputs"])
    offset = 0
    for output in response["outputs"]:
        tensor = message.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        chunk = None
        if size is not None:
            chunk = tensors[offset:offset + size]  # type: ignore[index]
            offset += size
        if raw:  # raw for one output means raw for all (the protocol's rule)
            message.raw_output_contents.append(
                chunk if chunk is not None else tensor_to_bytes(np.asarray(output["data"]), output["datatype"]))
        elif chunk is not None:  # a BYTES output, typed: its elements as they are
            elements = tensor_from_bytes(chunk, output["name"], output["datatype"], output["shape"])
            tensor.contents.bytes_contents.extend(elements.ravel().tolist())
        else:
            getattr(tensor.contents, CONTENTS_FIELD[output["datatype"]]).extend(output["data"])
    return message


def server_metadata(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=metadata["name"], version=metadata["version"],
                                     extensions=metadata["extensions"])


def model_metadata(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    def tensors(specs: list[Mapping[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(name=s["name"], datatype=s["datatype"], shape=s["shape"])
                for s in specs]

    return pb.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"],
                                    platform=metadata["platform"], inputs=tensors(metadata["inputs"]),
                                    outputs=tensors(metadata["outputs"]))
