"""The binary tensor data codec alone: round trips, and every malformed body as a 400 naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_ab.api.schemas import V2InferRequest, decode_v2_inputs, encode_v2_response, parse_body
from serve_ab.api.v2_binary import (
    binary_inputs,
    encode_v2_body,
    read_v2_body,
    tensor_from_bytes,
    tensor_to_bytes,
    wants_binary_output,
)
from serve_ab.backends.base import V2_DATATYPES, InputError
from serve_ab.errors import InvalidInput
from tests.support.fakes import DIGITS_INPUT, DIGITS_OUTPUT


def binary_request(inputs: list[tuple[str, str, list[int], bytes]], **extra) -> tuple[bytes, str]:
    """A body as tritonclient builds it: the JSON, then each input's bytes; and its header."""
    header = {"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                         for n, d, s, b in inputs], **extra}
    text = json.dumps(header).encode()
    return text + b"".join(b for *_, b in inputs), str(len(text))


def parsed(raw: bytes, header_length: str | None) -> tuple[V2InferRequest, dict[int, np.ndarray]]:
    body = read_v2_body(raw, header_length)
    request = parse_body(V2InferRequest, body.header)
    return request, binary_inputs(request, body.tensors)


@pytest.mark.parametrize("datatype", sorted(V2_DATATYPES))
def test_every_numeric_datatype_round_trips_little_endian(datatype):
    dtype = V2_DATATYPES[datatype]
    if datatype == "BOOL":
        values = np.arange(12) % 3 == 1
    else:
        values = np.arange(12) if dtype.kind == "u" else np.arange(-6, 6) * 7
    values = values.astype(dtype).reshape(3, 4)
    raw = tensor_to_bytes(values, datatype)
    assert raw == values.astype(dtype.newbyteorder("<")).tobytes() and len(raw) == values.nbytes
    back = tensor_from_bytes(raw, "x", datatype, [3, 4])
    assert back.dtype == dtype and back.shape == (3, 4) and np.array_equal(back, values)


def test_fp32_bytes_are_the_exact_values_and_a_view_of_the_body():
    values = np.array([[0.1, -1e-30, 3.4e38, np.float32(1) / 3]], dtype=np.float32)
    raw, length = binary_request([("input", "FP32", [1, 4], values.tobytes())])
    request, arrays = parsed(raw, length)
    assert arrays[0].tobytes() == values.tobytes()  # bit for bit: no round trip through text
    assert not arrays[0].flags.writeable  # np.frombuffer, no copy


def test_bytes_elements_in_tritons_layout():
    tritonclient_utils = pytest.importorskip("tritonclient.utils")
    values = np.array([[b"", b"a\x00b"], ["\u00e9t\u00e9".encode(), b"x" * 300]], dtype=object)
    raw = tritonclient_utils.serialize_byte_tensor(values).item()  # tritonclient's own encoder
    assert tensor_to_bytes(values, "BYTES") == raw
    back = tensor_from_bytes(raw, "text", "BYTES", [2, 2])
    assert back.dtype == object and back.tolist() == values.tolist()


@pytest.mark.parametrize("raw, shape, message", [
    (b"\x01\x00", [1], "ends inside element 0's 4-byte length"),
    (b"\x05\x00\x00\x00ab", [1], "element 0 says 5 bytes, but only 2 remain"),
    (b"\x01\x00\x00\x00a", [2], "holds 1 elements, but shape [2] needs 2"),
    (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", [1], "has 5 bytes left after the 1 elements"),
])
def test_malformed_bytes_elements(raw, shape, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tensor_from_bytes(raw, "text", "BYTES", shape)


@pytest.mark.parametrize("datatype, raw, shape", [
    ("FP32", b"", [0, 10**30]),        # past numpy's index range
    ("FP32", b"", [0, 2**62]),         # in range, but too big an array for numpy
    ("FP32", b"\x00" * 4, [1] * 70),   # more dimensions than numpy's 64
    ("BYTES", b"", [0, 10**30]),
    ("BYTES", b"\x01\x00\x00\x00a", [1] * 70),
])
def test_a_shape_no_array_can_have_is_an_input_error(datatype, raw, shape):
    # Its bytes add up (zero values, or one), so only building the array can refuse it.
    with pytest.raises(InputError, match="which no array can have"):
        tensor_from_bytes(raw, "input", datatype, shape)


def test_binary_data_without_the_length_header_is_a_400_that_names_the_header():
    raw, _ = binary_request([("input", "FP32", [1, 2], np.array([1.5, -2.0], "<f4").tobytes())])
    with pytest.raises(InvalidInput, match="not valid JSON.*names binary_data_size.*Inference-Header-Content-Length"):
        parsed(raw, None)


def test_a_binary_shape_no_array_can_have_is_a_400_through_the_v2_decoder():
    raw, header_length = binary_request([("input", "FP32", [0, 2**62], b"")])
    with pytest.raises(InvalidInput, match="which no array can have"):
        parsed(raw, header_length)


@pytest.mark.parametrize("shape, message", [
    # Before: a product of 4,300-digit dimensions could not be written in the message (a 500),
    # and 200,000 dimensions took seconds to multiply on the replica's loop.
    ([10**4299, 10**4299], "inputs.0.shape.0: Input should be less than or equal to 9223372036854775807"),
    ([0, 2**63], "inputs.0.shape.1: Input should be less than or equal to 9223372036854775807"),
    ([-(10**30), 64], "inputs.0.shape.0: Input should be greater than or equal to -9223372036854775808"),
    ([7] * 200_000, "inputs.0.shape: List should have at most 64 items after validation, not 200000"),
    # Floats: one error per item before the length was read (1.2 s and a 13-MB message).
    ([7.5] * 200_000, "inputs.0.shape: List should have at most 64 items after validation, not 200000"),
])
def test_a_declared_shape_past_int64_or_64_dimensions_is_a_400_before_its_size_is_worked_out(shape, message):
    for raw, header_length in (binary_request([("input", "FP32", shape, b"")]),
                               (header_of([fp32(None, shape=shape, data=[0.0] * 64)]), None)):
        with pytest.raises(InvalidInput) as caught:
            parsed(raw, header_length)
        assert message in str(caught.value)
        assert len(str(caught.value)) < 1_000  # the shape quoted cut short


def test_a_bytes_input_reaches_the_model_check_and_is_refused_clearly():
    raw, length = binary_request([("input", "BYTES", [1], tensor_to_bytes(np.array([b"hi"], object), "BYTES"))])
    request, arrays = parsed(raw, length)
    assert arrays[0].tolist() == [b"hi"]
    with pytest.raises(InputError, match="has datatype BYTES; this model takes FP32"):
        decode_v2_inputs(request, DIGITS_INPUT, DIGITS_OUTPUT, allow_non_finite=False, binary=arrays)


def test_decoded_binary_and_json_inputs_are_the_same_batch():
    values = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)
    raw, length = binary_request([("input", "FP32", [2, 64], values.tobytes())])
    request, arrays = parsed(raw, length)
    from_binary = decode_v2_inputs(request, DIGITS_INPUT, DIGITS_OUTPUT, allow_non_finite=False, binary=arrays)
    as_json = parse_body(V2InferRequest, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                                                      "data": values.ravel().tolist()}]})
    from_json = decode_v2_inputs(as_json, DIGITS_INPUT, DIGITS_OUTPUT, allow_non_finite=False)
    assert from_binary.dtype == from_json.dtype and np.array_equal(from_binary, from_json)


def test_non_finite_binary_values_follow_the_experiments_rule():
    values = np.full((1, 64), np.nan, dtype=np.float32)
    raw, length = binary_request([("input", "FP32", [1, 64], values.tobytes())])
    request, arrays = parsed(raw, length)
    with pytest.raises(InputError, match="NaN or infinity"):
        decode_v2_inputs(request, DIGITS_INPUT, DIGITS_OUTPUT, allow_non_finite=False, binary=arrays)


def test_a_header_that_counts_the_whole_body_is_plain_json():
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    raw = json.dumps(body).encode()
    request, arrays = parsed(raw, str(len(raw)))
    assert arrays == {} and request.inputs[0].data == [1.0]


ROW = np.zeros((1, 64), dtype=np.float32).tobytes()
GOOD, GOOD_LENGTH = binary_request([("input", "FP32", [1, 64], ROW)])


def header_of(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def fp32(size: int | None = 256, **tensor) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": size}, **tensor}


MALFORMED = [
    ("non-integer length", GOOD, "abc", "Inference-Header-Content-Length is 'abc'; expected the JSON header's length"),
    ("fractional length", GOOD, "12.5", "is '12.5'; expected"),
    ("signed length", GOOD, "+12", "is '+12'; expected"),
    ("negative length", GOOD, "-5", "is '-5'; a length cannot be negative"),
    ("empty length", GOOD, "", "is ''; expected"),
    ("length past the body", GOOD, str(len(GOOD) + 1), f"is {len(GOOD) + 1}, but the whole body is only {len(GOOD)}"),
    ("zero length", GOOD, "0", "JSON header (the body's first 0 bytes, per Inference-Header-Content-Length) is empty"),
    ("length cuts the JSON", GOOD, str(int(GOOD_LENGTH) - 1), "JSON header (the body's first"),
    ("sizes add up to less", GOOD + b"\x00" * 4, GOOD_LENGTH, "260 bytes follow the JSON header, but the inputs' "
                                                               "binary_data_size add up to 256 ('input': 256)"),
    ("sizes add up to more", GOOD[:-4], GOOD_LENGTH, "252 bytes follow the JSON header, but"),
    ("bytes and no binary input", header_of([fp32(None, data=[0.0] * 64)]) + b"\x00",
     str(len(header_of([fp32(None, data=[0.0] * 64)]))), "1 bytes follow the JSON header, but the inputs' "
                                                          "binary_data_size add up to 0 (no binary inputs)"),
    ("size not the shape's", header_of([fp32(128, shape=[1, 32])]) + ROW[:128], str(len(header_of([fp32(128, shape=[1, 32])]))),
     None),  # fine at the codec: 32 FP32 values; the model's shape check answers (see the route test)
    ("size not shape x dtype", header_of([fp32(255)]) + ROW[:255], str(len(header_of([fp32(255)]))),
     "has binary_data_size 255, but shape [1, 64] of FP32 is 256 bytes (64 values of 4)"),
    ("data and size", header_of([fp32(256, data=[0.0] * 64)]) + ROW, str(len(header_of([fp32(256, data=[0.0] * 64)]))),
     "inputs.0: give the values either in data or as binary_data_size raw bytes after the JSON, not both"),
    ("negative size", header_of([fp32(-4)]), str(len(header_of([fp32(-4)]))),
     "parameters.binary_data_size must be a whole number of bytes, e.g. 256; got -4"),
    ("string size", header_of([fp32("256")]) + ROW, str(len(header_of([fp32("256")]))), "got '256'"),
    ("boolean size", header_of([fp32(True)]) + b"\x00", str(len(header_of([fp32(True)]))), "got True"),
    ("size without the header", header_of([fp32(256)]) + ROW, None, "not valid JSON"),
    ("size in pure json", header_of([fp32(256)]), None,
     "input 'input' has parameters.binary_data_size, but the request has no Inference-Header-Content-Length"),
    ("neither data nor size", header_of([{"name": "input", "datatype": "FP32", "shape": [1, 64]}]), None,
     "inputs.0.data: field required"),
    ("null size", header_of([fp32(None)]), None, "inputs.0.data: field required"),
    ("negative dimension", header_of([fp32(0, shape=[-1, 64])]), str(len(header_of([fp32(0, shape=[-1, 64])]))),
     "negative dimension in shape [-1, 64]"),
    ("unknown datatype", header_of([fp32(4, datatype="FLOAT")]) + b"\x00" * 4,
     str(len(header_of([fp32(4, datatype="FLOAT")]))), "datatype 'FLOAT', which the Open Inference Protocol does not define"),
    ("bfloat16 bytes", header_of([fp32(2, datatype="BF16")]) + b"\x00" * 2,
     str(len(header_of([fp32(2, datatype="BF16")]))), "datatype 'BF16', which serve-ab cannot read from raw bytes"),
    ("bool bytes not 0/1", header_of([fp32(2, datatype="BOOL", shape=[1, 2])]) + b"\x01\x02",
     str(len(header_of([fp32(2, datatype="BOOL", shape=[1, 2])]))), "BOOL, whose bytes must be 0 or 1"),
]


@pytest.mark.parametrize("case, raw, header_length, message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_bodies_are_400s_naming_the_problem(case, raw, header_length, message):
    if message is None:
        parsed(raw, header_length)
        return
    with pytest.raises(InvalidInput) as caught:
        parsed(raw, header_length)
    assert message in str(caught.value)


@pytest.mark.parametrize("parameters, outputs, binary", [
    (None, None, False),
    ({"binary_data_output": True}, None, True),
    ({"binary_data_output": False}, None, False),
    (None, [{"name": "probabilities", "parameters": {"binary_data": True}}], True),
    ({"binary_data_output": True}, [{"name": "probabilities", "parameters": {"binary_data": False}}], False),
    ({"binary_data_output": True}, [{"name": "probabilities"}], True),
    (None, [{"name": "probabilities", "parameters": {"binary_data": False}}], False),
])
def test_which_answers_are_binary(parameters, outputs, binary):
    request = parse_body(V2InferRequest, {"inputs": [fp32(None, data=[0.0] * 64)], "parameters": parameters,
                                          "outputs": outputs})
    assert wants_binary_output(request, "probabilities") is binary


def test_binary_flags_must_be_booleans():
    request = parse_body(V2InferRequest, {"inputs": [fp32(None, data=[0.0] * 64)],
                                          "parameters": {"binary_data_output": "yes"}})
    with pytest.raises(InvalidInput, match="parameters.binary_data_output must be true or false; got 'yes'"):
        wants_binary_output(request, "probabilities")
    request = parse_body(V2InferRequest, {"inputs": [fp32(None, data=[0.0] * 64)],
                                          "outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]})
    with pytest.raises(InvalidInput, match="outputs.0.parameters.binary_data must be true or false; got 1"):
        wants_binary_output(request, "probabilities")


def test_a_binary_answer_reads_back_to_the_json_answers_numbers():
    outputs = np.random.default_rng(0).random((3, 10), dtype=np.float32)
    as_json = encode_v2_response("digits", "v1", "r", outputs, DIGITS_OUTPUT)
    tensors = tensor_to_bytes(outputs, "FP32")
    header = encode_v2_response("digits", "v1", "r", outputs, DIGITS_OUTPUT, binary_data_size=len(tensors))
    content, length = encode_v2_body(header, tensors)
    decoded = json.loads(content[:length])
    assert decoded["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [3, 10],
                                     "parameters": {"binary_data_size": 120}}
    back = np.frombuffer(content[length:], dtype="<f4").reshape(3, 10)
    assert np.array_equal(back, np.asarray(as_json["outputs"][0]["data"], dtype=np.float32).reshape(3, 10))
