"""The binary tensor data extension of the Open Inference Protocol (KServe V2) over HTTP.

A body is a JSON header, then raw tensor bytes. The ``Inference-Header-Content-Length``
HTTP header gives the JSON part's length in bytes; each binary tensor gives its own size in
``parameters.binary_data_size`` (and no ``data``), and the tensors' bytes follow the JSON in
the order the tensors are listed: little-endian, row-major, no padding; BOOL one byte per
element; BYTES each element's length as a 4-byte little-endian integer, then its bytes.
tritonclient speaks this by default; Triton's and KServe's docs name it
``binary_tensor_data``.

A client asks for binary outputs with ``"parameters": {"binary_data_output": true}`` on the
request (tritonclient's default when it names no outputs) or ``"binary_data": true`` on one
requested output (tritonclient's default when it does); the answer is then built the same
way, with ``Content-Type: application/octet-stream``.

No Ray. Whatever does not add up is a 400 naming it: guessing where a tensor starts would
feed the model numbers the client never sent.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_ab.api.http_util import decode_json
from serve_ab.api.schemas import V2_OTHER_DATATYPES, V2InferRequest
from serve_ab.backends.base import V2_DATATYPES, InputError, reshaped
from serve_ab.errors import InvalidInput

#: The HTTP header that carries the JSON part's length, as tritonclient spells it.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The name servers report in ``GET /v2``'s ``extensions``.
EXTENSION = "binary_tensor_data"
CONTENT_TYPE = "application/octet-stream"

# Explicitly little-endian, so a big-endian host reads the wire format too.
_WIRE_DTYPES: dict[str, np.dtype] = {name: dtype.newbyteorder("<") for name, dtype in V2_DATATYPES.items()}
_DIGITS = re.compile(r"[0-9]+")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class V2Body:
    """An infer request's body: its JSON (decoded, not yet validated) and the raw tensor bytes
    after it; ``tensors`` is None when the request came without the extension. ``json``: the
    JSON's bytes, as they came (for :func:`~serve_ab.api.http_util.refuse_repeated`)."""

    header: Any
    tensors: bytes | None = None
    json: bytes = b""


def read_v2_body(raw: bytes, header_length: str | None) -> V2Body:
    """Split a request body by its ``Inference-Header-Content-Length`` (None: all JSON)."""
    if header_length is None:
        try:
            header = decode_json(raw)
        except InvalidInput as err:
            if b'"binary_data_size"' not in raw:
                raise
            # Binary tensor data after the JSON, without the header that says where it starts.
            raise InvalidInput(f"{err.message}. The body's JSON names binary_data_size, so raw tensor bytes "
                               f"seem to follow it: send the JSON's length in bytes in the {HEADER_LENGTH} "
                               "header") from None
        return V2Body(header, json=raw)
    length = _header_length(header_length, len(raw))
    what = f"the JSON header (the body's first {length} bytes, per {HEADER_LENGTH})"
    return V2Body(decode_json(raw[:length], what=what), raw[length:], raw[:length])


def _header_length(value: str, body_bytes: int) -> int:
    text = value.strip()
    if text.startswith("-") and _DIGITS.fullmatch(text[1:]):
        raise InvalidInput(f"{HEADER_LENGTH} is {value!r}; a length cannot be negative: send the "
                           "JSON header's length in bytes, e.g. 187")
    if not _DIGITS.fullmatch(text):  # int() would also take "+7", "1_0" and non-ASCII digits
        raise InvalidInput(f"{HEADER_LENGTH} is {value!r}; expected the JSON header's length as a "
                           "whole number of bytes, e.g. 187")
    if len(text.lstrip("0")) > len(str(body_bytes)):  # past the body's size: no int() of 5,000 digits
        raise InvalidInput(f"{HEADER_LENGTH} is a number of {len(text)} digits, but the whole body is only "
                           f"{body_bytes} bytes; it must count the JSON header's bytes alone")
    length = int(text.lstrip("0") or "0")  # 5,000 zeros and a 7 is 7, not a refusal of int()
    if length > body_bytes:
        raise InvalidInput(f"{HEADER_LENGTH} is {length}, but the whole body is only {body_bytes} "
                           "bytes; it must count the JSON header's bytes alone")
    return length


def binary_inputs(request: V2InferRequest, tensors: bytes | None) -> dict[int, np.ndarray]:
    """The binary inputs' values, by position in ``request.inputs``, cut from ``tensors`` (the
    bytes after the JSON header; None when the request had no ``Inference-Header-Content-Length``)."""
    binary = [(i, t) for i, t in enumerate(request.inputs) if t.binary_data_size is not None]
    if tensors is None:
        if binary:
            raise InvalidInput(
                f"input '{binary[0][1].name}' has parameters.binary_data_size, but the request has "
                f"no {HEADER_LENGTH} header: send the JSON's length in bytes in that header and the "
                "raw tensor bytes after the JSON, or the values in data")
        return {}
    total = sum(t.binary_data_size or 0 for _, t in binary)
    if total != len(tensors):
        sizes = ", ".join(f"'{t.name}': {t.binary_data_size}" for _, t in binary) or "no binary inputs"
        raise InvalidInput(f"{len(tensors)} bytes follow the JSON header, but the inputs' binary_data_size "
                           f"add up to {total} ({sizes})")
    view = memoryview(tensors)
    arrays = {}
    offset = 0
    for i, tensor in binary:
        size = tensor.binary_data_size or 0
        arrays[i] = tensor_from_bytes(view[offset:offset + size], tensor.name, tensor.datatype, tensor.shape)
        offset += size
    return arrays


def tensor_from_bytes(buf: bytes | memoryview, name: str, datatype: str, shape: list[int]) -> np.ndarray:
    """One tensor's values from its raw bytes, checked against its shape and datatype.

    Numbers are a read-only view of ``buf`` (no copy); BYTES elements an object array of bytes.
    """
    if any(d < 0 for d in shape):
        raise InputError(f"input '{name}' has a negative dimension in shape {shape}")
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(memoryview(buf), name, shape, count)
    dtype = _WIRE_DTYPES.get(datatype)
    if dtype is None:
        defined = sorted([*V2_DATATYPES, *V2_OTHER_DATATYPES])
        if datatype not in defined:  # said as the JSON path says it (schemas._decode_tensor)
            raise InputError(f"input '{name}' has datatype '{datatype}', which the Open Inference "
                             f"Protocol does not define; valid: {defined}")
        # BF16: numpy has no bfloat16 to view the bytes as (nor any model here to take it).
        raise InputError(f"input '{name}' has datatype '{datatype}', which serve-ab cannot read from raw "
                         f"bytes (binary tensor data, gRPC raw_input_contents); valid: "
                         f"{sorted([*V2_DATATYPES, 'BYTES'])}")
    need = count * dtype.itemsize
    if len(buf) != need:
        raise InputError(f"input '{name}' has binary_data_size {len(buf)}, but shape {shape} of {datatype} "
                         f"is {need} bytes ({count} values of {dtype.itemsize})")
    array = np.frombuffer(buf, dtype=dtype)
    if datatype == "BOOL" and count and np.frombuffer(buf, dtype=np.uint8).max() > 1:
        raise InputError(f"input '{name}' is BOOL, whose bytes must be 0 or 1")
    return reshaped(array.astype(dtype.newbyteorder("="), copy=False), name, shape)


def _bytes_elements(view: memoryview, name: str, shape: list[int], count: int) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(items) == count:
            raise InputError(f"input '{name}' (BYTES) has {len(view) - offset} bytes left after the "
                             f"{count} elements its shape {shape} holds")
        if offset + _LENGTH.size > len(view):
            raise InputError(f"input '{name}' (BYTES) ends inside element {len(items)}'s 4-byte length")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + size > len(view):
            raise InputError(f"input '{name}' (BYTES) element {len(items)} says {size} bytes, but only "
                             f"{len(view) - offset} remain")
        items.append(bytes(view[offset:offset + size]))
        offset += size
    if len(items) != count:
        raise InputError(f"input '{name}' (BYTES) holds {len(items)} elements, but shape {shape} needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return reshaped(array, name, shape)


def tensor_to_bytes(values: np.ndarray, datatype: str) -> bytes:
    """``values`` in the wire format of ``datatype``: what :func:`tensor_from_bytes` reads."""
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in np.asarray(values, dtype=object).ravel()]
        return b"".join(_LENGTH.pack(len(v)) + v for v in items)
    return np.ascontiguousarray(values, dtype=_WIRE_DTYPES[datatype]).tobytes()


def wants_binary_output(request: V2InferRequest, output_name: str) -> bool:
    """Whether the answer carries ``output_name`` as binary: the requested output's
    ``binary_data`` if it says, else the request's ``binary_data_output``, else no."""
    for i, requested in enumerate(request.outputs or []):
        if requested.name == output_name:
            flag = _flag(requested.parameters, "binary_data", f"outputs.{i}.parameters.binary_data")
            if flag is not None:
                return flag
    return bool(_flag(request.parameters, "binary_data_output", "parameters.binary_data_output"))


def _flag(parameters: Mapping[str, Any] | None, key: str, where: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{where} must be true or false; got {value!r}")


def encode_v2_body(response: dict[str, Any], tensors: bytes) -> tuple[bytes, int]:
    """A response body with binary outputs: the JSON header, then ``tensors``; and the
    header's length in bytes, for ``Inference-Header-Content-Length``."""
    # As Starlette's JSONResponse renders JSON, so both modes' headers read the same.
    header = json.dumps(response, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return header + tensors, len(header)
