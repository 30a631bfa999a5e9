"""The Open Inference Protocol (KServe V2) over gRPC: ``inference.GRPCInferenceService``.

Ray Serve's gRPC proxy calls the router's methods named after the RPCs (``ModelInfer``, ...);
each is one line over :class:`GrpcInference`, which serves them over the same core and the
same V2 data plane as the HTTP routes (:class:`~serve_ab.serving.http.V2Endpoints`): the
same key, pin, split, checks and feedback token. No Ray here: ``context`` is whatever has
``invocation_metadata()``, ``peer()``, ``set_code``, ``set_details`` and
``set_trailing_metadata`` (Ray's ``RayServegRPCContext``, a fake in the unit tests).

Per request, as over HTTP: the assignment key is the request's ``parameters[<field>]`` or,
for ``assignment.key: header``, that header's name as gRPC metadata (lower-cased); a non-empty
``model_version`` (or the pin header as metadata) pins a version, which needs ``pin.enabled``
and the QA or operator token as ``authorization: Bearer <token>`` metadata. The answer names
its version in ``model_version``, carries ``request_id`` and (where the experiment takes
feedback) ``feedback_token`` in its parameters, and both in trailing metadata as the HTTP
headers do.

Errors become status codes in one table (:data:`serve_ab.api.errors.GRPC_STATUS`) with the
error's message as details (cut at :data:`MAX_DETAILS_CHARS`); the response is then empty, as
gRPC clients expect. A request that did not parse as protobuf, or an inference request with a
``parameters`` key twice, arrives as an :class:`~serve_ab.api.grpc.servicer.Undecodable` (the
parser :func:`serve_ab.api.grpc.servicer.add_GRPCInferenceServiceServicer_to_server` registers)
and is INVALID_ARGUMENT.
"""

# Everything below reads its annotations only as documentation (no FastAPI here).
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from serve_ab.api.errors import client_message, cut, grpc_status
from serve_ab.api.grpc import codec
from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc.servicer import Undecodable
from serve_ab.errors import BodyTooLarge, InvalidInput, PinningDisabled, ServeAbError
from serve_ab.serving.core.auth import Role
from serve_ab.serving.core.router import RouterCore
from serve_ab.serving.http import FEEDBACK_TOKEN_HEADER, VERSION_HEADER, Served, V2Endpoints

logger = logging.getLogger("ray.serve")
M = TypeVar("M", bound=Message)


class Context(Protocol):
    """What these methods use of a gRPC servicer context (Ray's ``RayServegRPCContext``)."""

    def invocation_metadata(self) -> Any: ...
    def peer(self) -> str: ...
    def set_code(self, code: Any) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: Any) -> None: ...


class Metadata(dict):
    """A call's metadata by lower-cased name: gRPC sends names lower-cased, while the config
    may spell a header ``X-User-Id``, as HTTP's case-blind headers allow. Values of binary
    metadata (names ending ``-bin``) come as bytes; they are read as Latin-1, as Starlette
    reads the same bytes in an HTTP header, so a key sent either way is the same user. A name
    sent twice has its first value, as an HTTP header sent twice does."""

    def __init__(self, context: Context):
        super().__init__()
        for name, value in context.invocation_metadata() or ():
            self.setdefault(str(name).lower(), value.decode("latin-1") if isinstance(value, bytes) else value)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class GrpcInference:
    """The six RPCs of ``inference.GRPCInferenceService`` over one router replica."""

    def __init__(self, served: Served):
        self.served = served

    async def server_live(self, request: pb.ServerLiveRequest | Undecodable,
                          context: Context) -> pb.ServerLiveResponse:
        return await _answer(request, context, pb.ServerLiveResponse, self._server_live)

    async def _server_live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest | Undecodable,
                           context: Context) -> pb.ServerReadyResponse:
        return await _answer(request, context, pb.ServerReadyResponse, self._server_ready)

    async def _server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.served.core.is_ready())

    async def model_ready(self, request: pb.ModelReadyRequest | Undecodable,
                          context: Context) -> pb.ModelReadyResponse:
        return await _answer(request, context, pb.ModelReadyResponse, lambda: self._model_ready(request))

    async def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        core = self.served.core
        core.check_model(request.name)
        if request.version:
            ready, _ = await core.version_ready(request.version)
        else:
            ready = await core.is_ready()
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest | Undecodable,
                              context: Context) -> pb.ServerMetadataResponse:
        return await _answer(request, context, pb.ServerMetadataResponse, self._server_metadata)

    async def _server_metadata(self) -> pb.ServerMetadataResponse:
        return codec.server_metadata(V2Endpoints(self.served.core).server_metadata())

    async def model_metadata(self, request: pb.ModelMetadataRequest | Undecodable,
                             context: Context) -> pb.ModelMetadataResponse:
        return await _answer(request, context, pb.ModelMetadataResponse,
                             lambda: self._model_metadata(request))

    async def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        v2 = V2Endpoints(self.served.core)
        return codec.model_metadata(await v2.model_metadata(request.name,
                                                            request.version or None))

    async def model_infer(self, request: pb.ModelInferRequest | Undecodable,
                          context: Context) -> pb.ModelInferResponse:
        core = self.served.core
        return await _answer(request, context, pb.ModelInferResponse,
                             lambda: self._model_infer(request, context),
                             max_bytes=core.cfg.http.max_body_bytes, answered_by=core)

    async def _model_infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        core = self.served.core
        size_bytes = request.ByteSize()
        if size_bytes > core.cfg.http.max_body_bytes:  # the HTTP body's limit, for the same batches
            raise _too_large(size_bytes, core.cfg.http.max_body_bytes)
        v2 = V2Endpoints(core)
        version = request.model_version or None
        v2.check(request.model_name, version)  # a wrong model or version is NOT_FOUND whatever the inputs
        metadata = Metadata(context)
        pinned = self._pinned(version, metadata, context)
        body, raw = codec.infer_body(request)
        served_by, response, tensors = await v2.infer(request.model_name, pinned, body, metadata,
                                                      bytes_as_binary=True)
        trailing = [(VERSION_HEADER, served_by)]
        token = response.get("parameters", {}).get("feedback_token")
        if token is not None:
            trailing.append((FEEDBACK_TOKEN_HEADER, token))
        context.set_trailing_metadata(trailing)
        return codec.infer_response(response, tensors, raw=raw)

    def _pinned(self, version: str | None, metadata: Metadata, context: Context) -> str | None:
        """As HTTP's pins: ``model_version`` or the pin header, once pinning is on and the
        caller holds the QA or operator token."""
        s = self.served
        pinned = version or metadata.get(s.core.cfg.pin.header)
        if pinned is None:
            return None
        if not s.core.cfg.pin.enabled:
            raise PinningDisabled(f"pinning a version ({pinned!r}) is turned off for this experiment "
                                  "(pin.enabled: false)")
        s.auth.check(metadata.get("authorization"), _address(context), Role.QA)
        return pinned


def _address(context: Context) -> str | None:
    """The caller's address from gRPC's peer string, e.g. ``ipv4:10.0.0.7:52144``."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":  # ipv6:[::1]:52144
        return rest.rpartition(":")[0].strip("[]") or None
    return peer or None


# gRPC sends details in a trailer, and clients refuse trailers over 8-16 KiB with a status of
# their own (RESOURCE_EXHAUSTED) in place of ours; a client's 100-KB model name quoted back
# whole would do that. Ray's proxy cuts its own messages to 4096 characters for the same reason.
MAX_DETAILS_CHARS = 2048


def _details(message: str) -> str:
    return cut(message, MAX_DETAILS_CHARS)


def _too_large(size_bytes: int, max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request is {size_bytes} bytes; this experiment takes at most "
                        f"{max_bytes} (http.max_body_bytes)")


async def _answer(request: Message | Undecodable, context: Context, empty: Callable[[], M],
                  call: Callable[[], Awaitable[M]], max_bytes: int | None = None,
                  answered_by: RouterCore | None = None) -> M:
    """``call``'s answer; on an error, its status code and message on ``context`` and an empty
    response (returned, not raised, so Ray's proxy sends the code without logging a traceback).
    A request the parser refused (:mod:`serve_ab.api.grpc.servicer`) is INVALID_ARGUMENT, or
    RESOURCE_EXHAUSTED over ``max_bytes``, as the same bytes that parsed would be. On an
    error, ``answered_by`` (the core whose versions may have answered before it) is told, so
    that the call's access line does not read OK."""
    try:
        if isinstance(request, Undecodable):
            if max_bytes is not None and request.size_bytes > max_bytes:
                raise _too_large(request.size_bytes, max_bytes)
            raise InvalidInput(request.describe())
        return await call()
    except ServeAbError as err:
        context.set_code(grpc_status(err))
        context.set_details(_details(client_message(err)))
    except Exception:
        logger.exception("serve-ab router: a gRPC call failed")
        context.set_code(grpc_status(RuntimeError()))
        context.set_details("internal error in the serve-ab router; its log has the traceback")
    if answered_by is not None and answered_by.on_failed_after_answer is not None:
        answered_by.on_failed_after_answer(answered_by.request_id())
    return empty()
