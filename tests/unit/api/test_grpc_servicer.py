"""``serve_ab.api.grpc.servicer``: the servicer function configs name for Ray Serve's gRPC
proxy registers what grpcio's generated one does, but bytes that are not the method's message
reach the router as an ``Undecodable``, which its methods answer INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import pickle

import grpc
import pytest

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc import grpc_predict_v2_pb2_grpc as generated
from serve_ab.api.grpc import servicer
from serve_ab.api.grpc.servicer import Undecodable, lenient_parser
from tests.unit.serving.test_grpc_v2 import FakeContext, infer_request, service  # noqa: F401 (fixture)

CORRUPT = b"\x0a\xff\xff\xff\xff\x0f"  # field 1 (a string) with a length past the end


class RecordingServer:
    """What a grpc server's registration methods receive."""

    def __init__(self):
        self.generic: dict[str, grpc.RpcMethodHandler] = {}
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers):
        (handler,) = handlers
        self.generic.update(handler._method_handlers)

    def add_registered_method_handlers(self, service_name, handlers):
        self.registered[service_name] = dict(handlers)


class Named:
    """A servicer whose every method is its own name, so a handler shows what it calls."""

    def __getattr__(self, name: str) -> str:
        return name


def registered(add) -> RecordingServer:
    server = RecordingServer()
    add(Named(), server)
    return server


def test_it_registers_the_methods_the_generated_function_does():
    ours, theirs = registered(servicer.add_GRPCInferenceServiceServicer_to_server), \
        registered(generated.add_GRPCInferenceServiceServicer_to_server)
    assert ours.generic.keys() == theirs.generic.keys() and len(ours.generic) == 6
    assert ours.registered.keys() == theirs.registered.keys() == {"inference.GRPCInferenceService"}
    for path, handler in theirs.generic.items():
        mine = ours.generic[path]
        assert mine.unary_unary == handler.unary_unary == path.rsplit("/", 1)[1]
        assert mine.response_serializer == handler.response_serializer
        # Every request that parses, parses to the same message.
        request_type = servicer.METHODS[path.rsplit("/", 1)[1]][0]
        sample = request_type()
        if request_type is pb.ModelInferRequest:
            sample = infer_request()
        data = sample.SerializeToString()
        assert mine.request_deserializer(data) == handler.request_deserializer(data)


def test_bytes_that_do_not_parse_are_undecodable_and_pickle():
    parse = lenient_parser(pb.ModelInferRequest)
    assert parse(b"") == pb.ModelInferRequest()
    bad = parse(CORRUPT)
    assert isinstance(bad, Undecodable) and bad.size_bytes == len(CORRUPT)
    assert "inference.ModelInferRequest" in bad.describe() and bad.reason in bad.describe()
    # Ray's proxy pickles the request to the router replica.
    assert pickle.loads(pickle.dumps(bad)) == bad
    with pytest.raises(Exception):  # noqa: B017 (the generated parser raises protobuf's DecodeError)
        pb.ModelInferRequest.FromString(CORRUPT)


GOOD = {
    "server_live": pb.ServerLiveRequest(),
    "server_ready": pb.ServerReadyRequest(),
    "model_ready": pb.ModelReadyRequest(name="digits"),
    "server_metadata": pb.ServerMetadataRequest(),
    "model_metadata": pb.ModelMetadataRequest(name="digits"),
    "model_infer": infer_request(),
}


@pytest.mark.parametrize("method", sorted(GOOD))
def test_every_method_answers_an_undecodable_request_invalid_argument(service, method):  # noqa: F811
    grpc_v2 = service()
    context = FakeContext()
    request = lenient_parser(type(GOOD[method]))(CORRUPT)
    response = asyncio.run(getattr(grpc_v2, method)(request, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT, (method, context.details)
    assert f"is not a valid inference.{type(GOOD[method]).__name__}" in context.details
    assert response.ByteSize() == 0
    # The method answers the next, good request.
    context = FakeContext()
    asyncio.run(getattr(grpc_v2, method)(GOOD[method], context))
    assert context.code is None, context.details
