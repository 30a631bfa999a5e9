"""``serve_ab.api.grpc.servicer``: the servicer function configs name for Ray Serve's gRPC
proxy registers what grpcio's generated one does, but bytes that are not the method's message
reach the router as an ``Undecodable``, which its methods answer INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import pickle

import grpc
import pytest
from google.protobuf.message import DecodeError

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc import grpc_predict_v2_pb2_grpc as generated
from serve_ab.api.grpc import servicer
from serve_ab.api.grpc.servicer import Undecodable, lenient_parser
from tests.unit.serving.test_grpc_v2 import infer_request

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
    assert bad.describe() == ("the request (6 bytes) is not a valid inference.ModelInferRequest "
                              "message: Wire format was corrupt")
    assert "bad UTF-8" in parse(b"\x0a\x02\xff\xfe").describe()  # model_name, not UTF-8
    # Ray's proxy pickles the request to the router replica.
    assert pickle.loads(pickle.dumps(bad)) == bad
    with pytest.raises(DecodeError):  # what the generated parser does with the same bytes
        pb.ModelInferRequest.FromString(CORRUPT)


def test_an_infer_request_with_a_parameter_key_twice_is_refused_and_pickles():
    """Protobuf's parse keeps the last of two entries of one key: alice's request would be
    served and counted as bob's. The parser refuses it, naming the key and the map."""
    alice, bob = infer_request(), pb.ModelInferRequest()
    alice.parameters["user_id"].string_param = "alice"
    bob.parameters["user_id"].string_param = "bob"
    data = alice.SerializeToString() + bob.SerializeToString()  # what a hand-built client may send
    assert pb.ModelInferRequest.FromString(data).parameters["user_id"].string_param == "bob"
    refused = lenient_parser(pb.ModelInferRequest)(data)
    assert isinstance(refused, servicer.RepeatedParameter) and isinstance(refused, Undecodable)
    assert refused.describe() == 'duplicate key "user_id" in parameters; send each key once'
    assert refused.size_bytes == len(data)
    assert pickle.loads(pickle.dumps(refused)) == refused
    # One entry of each key parses as before; so do the other messages, which are not scanned.
    assert lenient_parser(pb.ModelInferRequest)(alice.SerializeToString()) == alice
    name = pb.ModelReadyRequest(name="digits").SerializeToString()
    assert lenient_parser(pb.ModelReadyRequest)(name + name) == pb.ModelReadyRequest(name="digits")


def test_rays_grpc_server_keeps_our_request_parser(monkeypatch):
    """What the fix rests on: Ray Serve's gRPC proxy server replaces a handler's behaviour and
    response serializer but keeps its request deserializer, on both of grpcio's registration
    paths. Built, never started (no Ray instance, no port)."""
    from ray.serve._private.grpc_util import gRPCGenericServer

    registered: dict[str, grpc.RpcMethodHandler] = {}
    aio_server = gRPCGenericServer.__mro__[1]  # grpc.aio's server, below Ray's
    monkeypatch.setattr(aio_server, "add_registered_method_handlers",
                        lambda self, service_name, handlers: registered.update(handlers), raising=False)

    def factory(service_method, streaming_type):
        async def handle(request, context):
            return None
        return handle

    async def build() -> dict[str, grpc.RpcMethodHandler]:
        server = gRPCGenericServer(factory)
        servicer.add_GRPCInferenceServiceServicer_to_server(Named(), server)
        await server.stop(None)
        (generic,) = server.generic_rpc_handlers[-1]
        return generic._method_handlers

    generic = asyncio.run(build())
    assert set(generic) == {f"/inference.GRPCInferenceService/{m}" for m in servicer.METHODS}
    assert set(registered) == set(servicer.METHODS)
    for handler in [*generic.values(), *registered.values()]:
        assert handler.request_deserializer.__qualname__ == "lenient_parser.<locals>.parse"
        assert handler.response_serializer is None  # Ray's own: it sends the router's bytes
    parse = generic["/inference.GRPCInferenceService/ModelInfer"].request_deserializer
    assert isinstance(parse(CORRUPT), Undecodable)
