"""The router's gRPC methods (the Open Inference Protocol) over a core with fakes: no Ray, no
server. The same requests as the HTTP V2 routes, so the same answers and the same refusals,
as gRPC status codes."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_ab.api.grpc import codec
from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.serving import http as routes
from serve_ab.api.grpc.servicer import lenient_parser
from serve_ab.serving.grpc_v2 import MAX_DETAILS_CHARS, GrpcInference, Metadata
from tests.unit.serving.test_http import QA_TOKEN, VIEWER_TOKEN, make_app

ROW = np.arange(64, dtype=np.float32) / 64


class FakeContext:
    """What Ray's RayServegRPCContext gives a method: metadata in, code, details and trailing
    metadata out."""

    def __init__(self, metadata: dict[str, str] | None = None):
        self.metadata = list((metadata or {}).items())
        self.code = None
        self.details = None
        self.trailing: list[tuple[str, str]] = []

    def invocation_metadata(self):
        return self.metadata

    def peer(self) -> str:
        return "ipv4:10.0.0.7:52144"

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing) -> None:
        self.trailing = list(trailing)


@pytest.fixture
def service():
    def make(**changes) -> GrpcInference:
        make_app("colocated", **changes)
        return GrpcInference(routes.served())
    yield make
    routes.use_core(None)


def call(method, request, metadata: dict[str, str] | None = None):
    context = FakeContext(metadata)
    return asyncio.run(method(request, context)), context


def infer_request(raw: bool = True, rows: int = 1, **fields) -> pb.ModelInferRequest:
    batch = np.tile(ROW, (rows, 1))
    request = pb.ModelInferRequest(model_name=fields.pop("model_name", "digits"), **fields)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=batch.shape)
    if raw:
        request.raw_input_contents.append(batch.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    return request


def outputs_of(response: pb.ModelInferResponse) -> np.ndarray:
    tensor = response.outputs[0]
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        values = np.array(tensor.contents.fp32_contents, dtype=np.float32)
    return values.reshape(list(tensor.shape))


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_infer_answers_as_the_json_route_does(service, raw):
    grpc_v2 = service()
    request = infer_request(raw, rows=2, id="mine")
    request.parameters["user_id"].string_param = "alice"
    response, context = call(grpc_v2.model_infer, request)
    assert context.code is None, context.details
    with TestClient(routes.app) as client:
        plain = client.post("/predict", json={"inputs": np.tile(ROW, (2, 1)).tolist(), "user_id": "alice"}).json()
    assert response.model_version == plain["version"] and response.id == "mine"
    np.testing.assert_array_equal(outputs_of(response), np.array(plain["outputs"], dtype=np.float32))
    assert bool(response.raw_output_contents) == raw  # the answer travels as the request came
    params = {k: codec.parameter_value(v) for k, v in response.parameters.items()}
    assert params["request_id"] == "req-1" and params["feedback_token"]
    assert dict(context.trailing) == {"x-model-version": plain["version"], "x-feedback-token": params["feedback_token"]}


def test_the_key_is_read_from_parameters_and_keeps_a_user_on_one_version(service):
    grpc_v2 = service()
    for user in ("alice", "bob", "carol", "dave"):
        seen = set()
        for _ in range(3):
            request = infer_request()
            request.parameters["user_id"].string_param = user
            seen.add(call(grpc_v2.model_infer, request)[0].model_version)
        assert len(seen) == 1


def test_a_header_key_is_read_from_metadata_whatever_its_case(service):
    grpc_v2 = service(assignment={"key": "header", "header": "X-User-Id", "salt": "unit"})
    versions = {call(grpc_v2.model_infer, infer_request(), {"x-user-id": f"user-{i}"})[0].model_version
                for i in range(40)}
    assert versions == {"v1", "v2"}
    again = {call(grpc_v2.model_infer, infer_request(), {"x-user-id": "user-3"})[0].model_version for _ in range(5)}
    assert len(again) == 1


def test_a_key_header_sent_twice_has_its_first_value_as_over_http(service):
    """A proxy can add a header a client already sent. gRPC's metadata keeps both values in
    order; HTTP (Starlette, the router's routes) reads the first, and so does gRPC, so one
    request is one user whichever way it comes."""
    assignment = {"key": "header", "header": "X-User-Id", "salt": "unit"}
    grpc_v2 = service(assignment=assignment)

    def over_grpc(*values: str) -> str:
        context = FakeContext()
        context.metadata = [("x-user-id", value) for value in values]
        return asyncio.run(grpc_v2.model_infer(infer_request(), context)).model_version

    users = [f"user-{i}" for i in range(40)]
    version_of = {user: over_grpc(user) for user in users}
    first, other = users[0], next(u for u in users if version_of[u] != version_of[users[0]])
    assert over_grpc(first, other) == version_of[first]
    assert over_grpc(other, first) == version_of[other]
    make_app("colocated", assignment=assignment)  # the same experiment, over HTTP
    http = TestClient(routes.app, raise_server_exceptions=False)
    answer = http.post("/predict", json={"inputs": [ROW.tolist()]}, headers=[("x-user-id", other), ("x-user-id", first)])
    assert answer.json()["version"] == version_of[other]


def test_a_pin_needs_the_qa_token_as_metadata(service):
    grpc_v2 = service()
    response, context = call(grpc_v2.model_infer, infer_request(model_version="v2"))
    assert context.code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in context.details
    assert response == pb.ModelInferResponse()
    _, context = call(grpc_v2.model_infer, infer_request(model_version="v2"),
                      {"authorization": f"Bearer {VIEWER_TOKEN}"})
    assert context.code == grpc.StatusCode.PERMISSION_DENIED
    response, context = call(grpc_v2.model_infer, infer_request(model_version="v2"),
                             {"authorization": f"Bearer {QA_TOKEN}"})
    assert context.code is None and response.model_version == "v2"
    params = {k: codec.parameter_value(v) for k, v in response.parameters.items()}
    assert "feedback_token" in params  # a pinned answer's token says it was pinned


def test_pinning_turned_off_is_permission_denied(service):
    grpc_v2 = service(pin={"enabled": False})
    _, context = call(grpc_v2.model_infer, infer_request(model_version="v2"), {"authorization": f"Bearer {QA_TOKEN}"})
    assert context.code == grpc.StatusCode.PERMISSION_DENIED and "pin.enabled: false" in context.details


@pytest.mark.parametrize(("request_", "code", "details"), [
    (infer_request(model_name="other"), grpc.StatusCode.NOT_FOUND, "unknown model 'other'"),
    (infer_request(model_version="v9"), grpc.StatusCode.NOT_FOUND, "unknown version 'v9'"),
    (pb.ModelInferRequest(model_name="digits"), grpc.StatusCode.INVALID_ARGUMENT, "at least 1 item"),
])
def test_refusals_are_status_codes_that_name_the_problem(service, request_, code, details):
    response, context = call(service().model_infer, request_)
    assert context.code == code and details in context.details
    assert response == pb.ModelInferResponse()


def test_bad_inputs_are_invalid_argument(service):
    grpc_v2 = service()
    request = infer_request()
    request.inputs[0].shape[:] = [1, 32, 2]
    _, context = call(grpc_v2.model_infer, request)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "must have shape [n, 64]" in context.details
    request = infer_request(raw=False)
    request.inputs[0].contents.fp32_contents[0] = float("nan")
    _, context = call(grpc_v2.model_infer, request)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in context.details
    request = infer_request()
    request.parameters["user_id"].double_param = 1.5
    _, context = call(grpc_v2.model_infer, request)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in context.details


def test_a_request_over_the_body_limit_is_resource_exhausted(service):
    _, context = call(service().model_infer, infer_request(rows=40))  # 10 KB > http.max_body_bytes 8192
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "http.max_body_bytes" in context.details


def test_health_and_metadata(service):
    grpc_v2 = service()
    assert call(grpc_v2.server_live, pb.ServerLiveRequest())[0].live
    assert call(grpc_v2.server_ready, pb.ServerReadyRequest())[0].ready
    assert call(grpc_v2.model_ready, pb.ModelReadyRequest(name="digits"))[0].ready
    assert call(grpc_v2.model_ready, pb.ModelReadyRequest(name="digits", version="v1"))[0].ready
    _, context = call(grpc_v2.model_ready, pb.ModelReadyRequest(name="digits", version="v9"))
    assert context.code == grpc.StatusCode.NOT_FOUND
    server = call(grpc_v2.server_metadata, pb.ServerMetadataRequest())[0]
    assert server.name == "serve-ab" and "binary_tensor_data" in server.extensions
    model = call(grpc_v2.model_metadata, pb.ModelMetadataRequest(name="digits"))[0]
    assert list(model.versions) == ["v1", "v2"] and model.inputs[0].name == "input"
    assert (model.inputs[0].datatype, list(model.inputs[0].shape)) == ("FP32", [-1, 64])
    version = call(grpc_v2.model_metadata, pb.ModelMetadataRequest(name="digits", version="v2"))[0]
    assert version.platform == "pytorch_torchexport"
    _, context = call(grpc_v2.model_metadata, pb.ModelMetadataRequest(name="nope"))
    assert context.code == grpc.StatusCode.NOT_FOUND


def test_an_unexpected_failure_is_internal_without_its_traceback(service):
    grpc_v2 = service()

    async def broken(*args, **kwargs):
        raise RuntimeError("secret /srv/path")

    grpc_v2.served.core.is_ready = broken
    _, context = call(grpc_v2.server_ready, pb.ServerReadyRequest())
    assert context.code == grpc.StatusCode.INTERNAL and "secret" not in context.details


def test_random_malformed_requests_are_never_a_server_error(service):
    """Shapes, datatypes, names, raw sizes and typed fields picked at random (seeded): every
    answer is OK or a client's status code, never INTERNAL or UNKNOWN."""
    import random

    grpc_v2 = service()
    rng = random.Random(14)
    datatypes = ["FP32", "FP64", "INT32", "INT64", "BOOL", "FP16", "BYTES", "FLOAT", ""]
    fields = ["fp32_contents", "fp64_contents", "int_contents", "int64_contents", "bool_contents", "bytes_contents"]
    seen = set()
    for _ in range(300):
        request = pb.ModelInferRequest(model_name=rng.choice(["digits", "digits", "", "x"]),
                                       model_version=rng.choice(["", "", "", "v1", "v9"]))
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            shape = [rng.choice([-1, 0, 1, 2, 32, 64]) for _ in range(rng.choice([0, 1, 2, 2, 3]))]
            tensor = request.inputs.add(name=rng.choice(["input", "input", "pixels"]),
                                        datatype=rng.choice(datatypes), shape=shape)
            if rng.random() < 0.5:
                request.raw_input_contents.append(bytes(rng.choice([0, 3, 256, 512])))
            else:
                field = rng.choice(fields)
                values = {"bool_contents": [True] * 64, "bytes_contents": [b"a"] * 64}.get(field, [1] * 64)
                getattr(tensor.contents, field).extend(values[:rng.choice([0, 1, 64])])
        if rng.random() < 0.3:
            request.parameters["user_id"].double_param = 0.5
        response, context = call(grpc_v2.model_infer, request)
        seen.add(context.code)
        assert context.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (request, context.details)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.NOT_FOUND in seen


GOOD = {
    "server_live": pb.ServerLiveRequest(),
    "server_ready": pb.ServerReadyRequest(),
    "model_ready": pb.ModelReadyRequest(name="digits"),
    "server_metadata": pb.ServerMetadataRequest(),
    "model_metadata": pb.ModelMetadataRequest(name="digits"),
    "model_infer": infer_request(),
}


@pytest.mark.parametrize("method", sorted(GOOD))
def test_every_method_answers_a_request_that_did_not_parse_invalid_argument(service, method):
    grpc_v2 = service()
    context = FakeContext()
    request = lenient_parser(type(GOOD[method]))(b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end
    response = asyncio.run(getattr(grpc_v2, method)(request, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT, (method, context.details)
    assert f"is not a valid inference.{type(GOOD[method]).__name__}" in context.details
    assert response.ByteSize() == 0
    # The method answers the next, good request.
    context = FakeContext()
    asyncio.run(getattr(grpc_v2, method)(GOOD[method], context))
    assert context.code is None, context.details


def test_an_infer_request_with_a_parameter_key_twice_is_invalid_argument_and_counts_nothing(service):
    grpc_v2 = service()
    first, second = infer_request(), pb.ModelInferRequest()
    first.parameters["user_id"].string_param = "alice"
    second.parameters["user_id"].string_param = "bob"
    request = lenient_parser(pb.ModelInferRequest)(first.SerializeToString() + second.SerializeToString())
    def calls() -> int:
        return sum(version.calls for version in grpc_v2.served.core.versions.values())

    before = calls()
    response, context = call(grpc_v2.model_infer, request)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details == 'duplicate key "user_id" in parameters; send each key once'
    assert response.ByteSize() == 0
    assert calls() == before  # refused before the model ran: nothing served, nothing counted
    _, context = call(grpc_v2.model_infer, first)
    assert context.code is None and calls() == before + 1, context.details


def test_a_request_that_did_not_parse_over_the_size_limit_is_resource_exhausted(service):
    """As the same bytes would be had they parsed (HTTP checks the size first too: 413)."""
    too_big = infer_request(rows=40).SerializeToString()  # 10 KB > http.max_body_bytes 8192
    _, context = call(service().model_infer, lenient_parser(pb.ModelInferRequest)(too_big[:-1]))
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "http.max_body_bytes" in context.details


def test_details_quoting_a_long_client_string_are_cut(service):
    """gRPC clients refuse trailers over 8-16 KiB with a status of their own; a 100-KB model
    name quoted back whole would turn NOT_FOUND into RESOURCE_EXHAUSTED at the client."""
    _, context = call(service().model_metadata, pb.ModelMetadataRequest(name="x" * 100_000))
    assert context.code == grpc.StatusCode.NOT_FOUND
    assert context.details.startswith("unknown model 'xxx")
    assert len(context.details) < MAX_DETAILS_CHARS + 100 and "more characters cut" in context.details


def test_a_key_header_sent_as_binary_metadata_is_read_as_http_reads_it(service):
    """Names ending -bin are binary metadata: grpcio hands their values over as bytes."""
    grpc_v2 = service(assignment={"key": "header", "header": "X-User-Id-Bin"})
    context = FakeContext({"x-user-id-bin": "caf\xe9".encode("latin-1")})
    assert Metadata(context).get("X-User-Id-Bin") == "caf\xe9"
    # Thirty users, so that another decoding (UTF-8 with replacement, say) would move some.
    for i in range(30):
        texts = call(grpc_v2.model_infer, infer_request(), {"x-user-id-bin": f"caf\xe9-{i}"})
        raw = call(grpc_v2.model_infer, infer_request(), {"x-user-id-bin": f"caf\xe9-{i}".encode("latin-1")})
        assert raw[1].code is None and texts[1].code is None, raw[1].details
        assert raw[0].model_version == texts[0].model_version, i


def test_the_grpc_methods_import_no_ray():
    import subprocess
    import sys

    code = ("import sys, serve_ab.serving.grpc_v2; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"serve_ab.serving.grpc_v2 pulled in Ray: {out}"


def test_a_call_that_fails_after_its_version_answered_logs_its_code_not_ok(service, monkeypatch):
    """Ray writes OK for a call answered with a code on its context; the access line reads
    the code also where a version had answered before the failure (in encoding its answer)."""
    import logging

    from serve_ab.api.access_log import VersionOnAccessLine, VersionsAnswered

    grpc_v2 = service()
    answered = VersionsAnswered()
    core = grpc_v2.served.core
    core.on_answer, core.on_failed_after_answer = answered.note, answered.failed
    context = FakeContext()
    line_filter = VersionOnAccessLine(answered, grpc_status=lambda: context.code and context.code.name)

    def access_line() -> str:
        record = logging.LogRecord("ray.serve", logging.INFO, __file__, 0, "CALL digits OK 3.0ms", None, None)
        record.request_id, record.serve_access_log = "req-1", True
        line_filter.filter(record)
        return record.msg

    asyncio.run(grpc_v2.model_infer(infer_request(), context))
    assert context.code is None and access_line() in ("CALL digits OK 3.0ms version=v1",
                                                      "CALL digits OK 3.0ms version=v2")

    def unencodable(response, tensors):
        raise RuntimeError("an output the protocol cannot carry")

    monkeypatch.setattr(codec, "infer_response", unencodable)
    asyncio.run(grpc_v2.model_infer(infer_request(), context))
    assert context.code == grpc.StatusCode.INTERNAL
    line = access_line()
    assert line.startswith("CALL digits INTERNAL 3.0ms version=v"), line
