"""Registers ``inference.GRPCInferenceService`` on Ray Serve's gRPC proxy: the function a
config names in ``grpc_options.grpc_servicer_functions``.

It registers what grpcio's generated ``add_GRPCInferenceServiceServicer_to_server`` does
(``grpc_predict_v2_pb2_grpc``, never edited by hand) but for one thing: a request that does
not parse as protobuf (truncated or corrupt wire format, bad UTF-8 in a string field). With
the generated deserializer grpcio answers it UNKNOWN ("Unexpected <class 'DecodeError'>"), a
server fault as far as a client or a retry policy can tell, for the client's own bad bytes.
Here the deserializer hands the router an :class:`Undecodable` instead, which its methods
answer INVALID_ARGUMENT naming the message type (:mod:`serve_ab.serving.grpc_v2`), as a
malformed JSON body gets a 400. (Protobuf skips fields it does not know, so another message's
well-formed bytes usually parse, as they would with the generated code.) A ModelInferRequest
that holds one ``parameters`` key twice, which protobuf's parse would keep only the last of, is
refused the same way (:class:`RepeatedParameter`), as the HTTP routes refuse a JSON key twice.

Ray's proxy keeps a handler's request deserializer (it replaces only the response serializer
and the behaviour) and pickles the request to the router replica, so :class:`Undecodable` is
a plain class that any process with serve_ab imports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc.repeated_parameters import repeated_parameter

SERVICE = "inference.GRPCInferenceService"

# Each RPC's request and response message, in the proto's order.
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not its method's message; ``reason`` is protobuf's."""

    message_type: str  # e.g. "inference.ModelInferRequest"
    size_bytes: int
    reason: str

    def describe(self) -> str:
        return (f"the request ({self.size_bytes} bytes) is not a valid {self.message_type} "
                f"message: {self.reason}")


@dataclass(frozen=True)
class RepeatedParameter(Undecodable):
    """A ModelInferRequest that parses but holds a key twice in one ``parameters`` map
    (:mod:`serve_ab.api.grpc.repeated_parameters`), refused as bytes that do not parse are;
    ``reason`` names the key and the map."""

    def describe(self) -> str:
        return self.reason


def lenient_parser(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """``message.FromString``, but an :class:`Undecodable` where the bytes do not parse, and for
    a ModelInferRequest a :class:`RepeatedParameter` where a ``parameters`` key comes twice."""
    name = message.DESCRIPTOR.full_name
    check_repeats = message is pb.ModelInferRequest

    def parse(data: bytes) -> Message | Undecodable:
        try:
            parsed = message.FromString(data)
            repeat = repeated_parameter(data) if check_repeats else None
        except (DecodeError, UnicodeDecodeError) as err:  # the second: protobuf's pure-Python parser
            # "Error parsing message with type 'X': Wire format was corrupt": the type is named once.
            return Undecodable(name, len(data), str(err).rpartition("': ")[2] or str(err))
        if repeat is not None:
            where, key = repeat
            reason = f"duplicate key {json.dumps(key[:80])} in {where}; send each key once"
            return RepeatedParameter(name, len(data), reason)
        return parsed

    return parse


def add_GRPCInferenceServiceServicer_to_server(servicer: Any, server: Any) -> None:
    """Register the six RPCs of ``inference.GRPCInferenceService`` on ``server``, as the
    generated function of the same name does, with :func:`lenient_parser` for requests."""
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method),
            request_deserializer=lenient_parser(request),
            response_serializer=response.SerializeToString,
        )
        for method, (request, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    # grpcio >= 1.63 also takes them as registered methods (the generated code does both).
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:
        add_registered(SERVICE, handlers)
