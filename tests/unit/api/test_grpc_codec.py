"""The gRPC messages of the Open Inference Protocol, read and written by the V2 codec; and the
table of gRPC status codes. No Ray, no server: messages in, arrays and messages out."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

from serve_ab import errors
from serve_ab.api.errors import GRPC_STATUS, HTTP_STATUS, grpc_status
from serve_ab.api.grpc import codec
from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.schemas import V2InferRequest, decode_v2_inputs, parse_body
from serve_ab.api.v2_binary import binary_inputs
from serve_ab.backends.base import InputError, InputSpec, OutputSpec

OUTPUT = OutputSpec(name="out", dtype=np.dtype("float32"), shape=(-1, 2))
# The datatypes the issue names, each with values that survive its own width exactly.
CASES = {
    "FP32": np.array([[0.5, -1.25, 3.0], [2.0, 0.0, 1e-3]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300]], dtype=np.float64),
    "INT32": np.array([[1, -2, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[2**40, -7, 0]], dtype=np.int64),
    "BOOL": np.array([[True, False, True]], dtype=np.bool_),
}


def _request(array: np.ndarray, datatype: str, raw: bool, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", **fields)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=array.shape)
    if raw:
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    else:
        getattr(tensor.contents, codec.CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return request


def _decode(request: pb.ModelInferRequest, spec: InputSpec) -> np.ndarray:
    """What the router does with a request: the V2 body, then the HTTP V2 codec's checks."""
    body, _ = codec.infer_body(request)
    parsed = parse_body(V2InferRequest, body.header)
    return decode_v2_inputs(parsed, spec, OUTPUT, allow_non_finite=False, binary=binary_inputs(parsed, body.tensors))


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", list(CASES))
def test_every_datatype_decodes_to_the_same_array_raw_or_typed(datatype, raw):
    array = CASES[datatype]
    spec = InputSpec(name="x", dtype=array.dtype, shape=(-1, array.shape[1]))
    decoded = _decode(_request(array, datatype, raw), spec)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_raw_bytes_are_read_little_endian():
    request = _request(np.array([[1]], dtype=np.int32), "INT32", raw=False)
    request.ClearField("inputs")
    request.inputs.add(name="x", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(b"\x01\x00\x00\x00")
    assert _decode(request, InputSpec("x", np.dtype("int32"), (-1, 1))).tolist() == [[1]]


def test_parameters_id_and_requested_outputs_travel_as_in_the_http_body():
    request = _request(CASES["FP32"], "FP32", raw=True, id="abc")
    request.parameters["user_id"].string_param = "alice"
    request.parameters["priority"].int64_param = 3
    request.outputs.add(name="out")
    body, raw = codec.infer_body(request)
    assert raw and body.header["id"] == "abc"
    # Raw in, raw out: the answer's tensors come back as bytes.
    assert body.header["parameters"] == {"user_id": "alice", "priority": 3, "binary_data_output": True}
    assert body.header["outputs"] == [{"name": "out"}]
    assert body.header["inputs"][0]["parameters"] == {"binary_data_size": CASES["FP32"].nbytes}
    typed, raw = codec.infer_body(_request(CASES["FP32"], "FP32", raw=False))
    assert not raw and "parameters" not in typed.header and typed.tensors is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.raw_input_contents.append(b"\x00" * 4), "raw_input_contents has 2 entries, but the request lists 1"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 5),
     "raw_input_contents[0] (input 'x') has 5 bytes, but shape [2, 3] of FP32 is 24 bytes"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "also has raw_input_contents"),
])
def test_raw_contents_that_do_not_add_up_are_named(change, message):
    request = _request(CASES["FP32"], "FP32", raw=True)
    change(request)
    with pytest.raises(errors.InvalidInput, match=re.escape(message)):
        codec.infer_body(request)


@pytest.mark.parametrize(("datatype", "fill", "message"), [
    ("FP32", lambda c: c.int64_contents.extend([1] * 6), "whose values go in contents.fp32_contents; got values in "
                                                         "contents.int64_contents"),
    ("FP32", None, "has no values: send them in contents.fp32_contents or raw_input_contents"),
    ("FP16", lambda c: c.fp32_contents.extend([1.0] * 6), "travel only in raw_input_contents"),
])
def test_typed_contents_in_the_wrong_field_are_named(datatype, fill, message):
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    if fill is not None:
        fill(tensor.contents)
    with pytest.raises(errors.InvalidInput, match=message):
        codec.infer_body(request)


@pytest.mark.parametrize("raw", [False, True], ids=["typed contents", "raw contents"])
def test_a_shape_of_more_than_64_dimensions_is_refused_before_its_size_is_worked_out(raw):
    # 40,000 dimensions took 8 s of the replica's loop to multiply (raw contents, twice).
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2**62 + 1] * 40_000 + [0])
    if raw:
        request.raw_input_contents.append(b"")
    else:
        tensor.contents.fp32_contents.append(0.0)
    with pytest.raises(errors.InvalidInput, match="input 'x' has 40,001 dimensions; a tensor has at most 64"):
        codec.infer_body(request)


@pytest.mark.parametrize(("request_", "message"), [
    (_request(CASES["FP32"][:, :2], "FP32", raw=False), "must have shape"),
    (_request(CASES["INT64"], "INT64", raw=True), "this model takes FP32"),
    (_request(np.array([[np.nan, 0.0, 1.0]], dtype=np.float32), "FP32", raw=True), "NaN or infinity"),
])
def test_the_v2_codecs_checks_apply_to_grpc_requests(request_, message):
    with pytest.raises(InputError, match=message):
        _decode(request_, InputSpec("x", np.dtype("float32"), (-1, 3)))


@pytest.mark.parametrize("raw", [False, True], ids=["typed contents", "raw contents"])
def test_an_unknown_datatype_is_named_by_the_v2_check(raw):
    # Raw contents are read by the binary extension's code: said the same way, not as binary data's.
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FLOAT", shape=[1, 3])
    if raw:
        request.raw_input_contents.append(np.zeros(3, dtype="<f4").tobytes())
    with pytest.raises(InputError, match=r"'FLOAT', which the Open Inference Protocol does not define; valid: \[.*'BF16'"):
        _decode(request, InputSpec("x", np.dtype("float32"), (-1, 3)))


def _answer(binary: bool) -> tuple[dict, bytes | None]:
    outputs = np.array([[0.25, 0.75]], dtype=np.float32)
    tensor = {"name": "out", "datatype": "FP32", "shape": [1, 2]}
    if binary:
        tensor["parameters"] = {"binary_data_size": outputs.nbytes}
    else:
        tensor["data"] = outputs.ravel().tolist()
    response = {"model_name": "m", "model_version": "v2", "id": "abc", "outputs": [tensor],
                "parameters": {"request_id": "req-1", "feedback_token": "tok", "n": 2, "ok": True}}
    return response, outputs.tobytes() if binary else None


def test_a_binary_answer_becomes_raw_output_contents():
    message = codec.infer_response(*_answer(binary=True), raw=True)
    assert (message.model_name, message.model_version, message.id) == ("m", "v2", "abc")
    assert np.frombuffer(message.raw_output_contents[0], dtype="<f4").tolist() == [0.25, 0.75]
    assert list(message.outputs[0].shape) == [1, 2] and not message.outputs[0].HasField("contents")
    params = {k: codec.parameter_value(v) for k, v in message.parameters.items()}
    assert params == {"request_id": "req-1", "feedback_token": "tok", "n": 2, "ok": True}


def test_a_json_answer_becomes_typed_contents():
    message = codec.infer_response(*_answer(binary=False), raw=False)
    assert not message.raw_output_contents
    assert list(message.outputs[0].contents.fp32_contents) == [0.25, 0.75]


def test_an_fp16_answer_goes_raw_even_for_a_typed_request():
    response = {"model_name": "m", "model_version": "v1", "outputs": [
        {"name": "out", "datatype": "FP16", "shape": [1, 2], "data": [0.5, 1.0]}]}
    message = codec.infer_response(response, None, raw=False)
    assert np.frombuffer(message.raw_output_contents[0], dtype="<f2").tolist() == [0.5, 1.0]


def test_parameters_round_trip_every_kind():
    for value in (True, 7, 2.5, "alice"):
        assert codec.parameter_value(codec.parameter_of(value)) == value
    assert codec.parameter_value(pb.InferParameter()) is None


# -- status codes ----------------------------------------------------------------------------

@pytest.mark.parametrize(("err", "code"), [
    (errors.InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (InputError("bad shape"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unprocessable("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.BodyTooLarge("big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnknownModel("m"), grpc.StatusCode.NOT_FOUND),
    (errors.VersionNotServed("v9"), grpc.StatusCode.NOT_FOUND),
    (errors.Unauthorized("no token"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.Forbidden("viewer"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.PinningDisabled("off"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.VersionUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
    (errors.BadOutput("nan"), grpc.StatusCode.UNAVAILABLE),
    (errors.ModelFailed("raised"), grpc.StatusCode.INTERNAL),  # not retryable
    (errors.ControllerUnavailable("restarting"), grpc.StatusCode.UNAVAILABLE),
    (RuntimeError("bug"), grpc.StatusCode.INTERNAL),
])
def test_errors_map_to_grpc_codes(err, code):
    assert grpc_status(err) == code


def test_no_client_error_is_unknown_or_internal_and_every_http_error_has_a_code():
    assert set(HTTP_STATUS) <= set(GRPC_STATUS) | {errors.Unprocessable, errors.BadOutput}
    for cls in errors.__all__:
        err_cls = getattr(errors, cls)
        if err_cls in (errors.ServeAbError, errors.ModelFailed):  # the model's own failure is INTERNAL, as Triton's
            continue
        assert grpc_status(err_cls("x")) not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), cls


def test_an_error_from_another_replica_keeps_its_code():
    # Ray re-raises a replica's error as a class deriving from it and from RayTaskError.
    wrapped = type("RayTaskError(VersionNotServed)", (errors.VersionNotServed,), {})("unknown version 'v9'")
    assert grpc_status(wrapped) == grpc.StatusCode.NOT_FOUND
