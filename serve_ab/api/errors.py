"""The one place where serve-ab's errors become HTTP statuses and gRPC status codes.

The core raises :mod:`serve_ab.errors` exceptions, which know nothing of transports; these
tables decide what a client sees. The most specific class wins (``BodyTooLarge`` before
``InvalidInput``), and anything unknown is the server's fault (500, INTERNAL).
"""

from __future__ import annotations

from grpc import StatusCode

from serve_ab import errors

HTTP_STATUS: dict[type[errors.ServeAbError], int] = {
    errors.BodyTooLarge: 413,
    errors.BodyTimeout: 408,
    errors.UnsupportedEncoding: 415,
    errors.Unprocessable: 422,
    errors.InvalidInput: 400,
    errors.Unauthorized: 401,
    errors.PinningDisabled: 403,
    errors.Forbidden: 403,
    errors.Conflict: 409,
    errors.NotFound: 404,
    errors.ActionRefused: 409,
    errors.BadOutput: 502,
    errors.VersionUnavailable: 503,
    errors.ControllerUnavailable: 503,
    errors.StoreUnavailable: 503,
}


# gRPC's own meanings: UNAVAILABLE says "retry may succeed" (an outage, a restarting
# controller); RESOURCE_EXHAUSTED is what gRPC answers for a message over its size limit.
GRPC_STATUS: dict[type[errors.ServeAbError], StatusCode] = {
    errors.BodyTooLarge: StatusCode.RESOURCE_EXHAUSTED,
    errors.BodyTimeout: StatusCode.DEADLINE_EXCEEDED,
    errors.UnsupportedEncoding: StatusCode.UNIMPLEMENTED,  # gRPC's answer to a compression it lacks
    errors.InvalidInput: StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: StatusCode.UNAUTHENTICATED,
    errors.PinningDisabled: StatusCode.PERMISSION_DENIED,
    errors.Forbidden: StatusCode.PERMISSION_DENIED,
    errors.Conflict: StatusCode.ALREADY_EXISTS,
    errors.NotFound: StatusCode.NOT_FOUND,
    errors.ActionRefused: StatusCode.FAILED_PRECONDITION,
    # A model that raised: not UNAVAILABLE, which retry policies and meshes retry; the same
    # input would likely fail again (the router does not retry it either).
    errors.ModelFailed: StatusCode.INTERNAL,
    errors.VersionUnavailable: StatusCode.UNAVAILABLE,
    errors.ControllerUnavailable: StatusCode.UNAVAILABLE,
    errors.StoreUnavailable: StatusCode.UNAVAILABLE,
}


def grpc_status(err: BaseException) -> StatusCode:
    """The gRPC status code for ``err``: its nearest class in :data:`GRPC_STATUS`, else INTERNAL."""
    for cls in type(err).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return StatusCode.INTERNAL


def http_status(err: BaseException) -> int:
    """The HTTP status for ``err``: its nearest class in :data:`HTTP_STATUS`, else 500."""
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


# Messages quote what the client sent ("unknown version 'vvv...'"); a 60-KB header should not
# come back whole in every answer to it. gRPC cuts shorter still (grpc_v2.MAX_DETAILS_CHARS).
MAX_MESSAGE_CHARS = 4096


# RFC 9110 (11.6.1): a 401 says how to authenticate. Tokens go as bearer tokens (RFC 6750).
_CHALLENGE = {"www-authenticate": 'Bearer realm="serve-ab"'}


# RFC 9110 (15.5.9): a 408 closes the connection. The rest of a body that was cut off by the
# timeout would otherwise be read as the next request's start, or keep the connection waiting.
_CLOSE = {"connection": "close"}


def error_headers(status: int) -> dict[str, str] | None:
    """Headers an error answer of ``status`` carries: a 401's challenge, a 408's close; None otherwise."""
    return _CHALLENGE if status == 401 else _CLOSE if status == 408 else None


def client_message(err: BaseException) -> str:
    """What the client is told, at most :data:`MAX_MESSAGE_CHARS`. An error raised in another
    replica arrives wrapped by Ray (a class deriving from both the original and RayTaskError)
    whose ``str`` is a whole traceback; its ``cause`` is the original, whose message is meant
    for the client."""
    original = getattr(err, "cause", None) or err
    return cut(getattr(original, "message", None) or str(original))


def cut(message: str, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """``message``, or its first ``max_chars`` characters and how many more were cut."""
    if len(message) <= max_chars:
        return message
    return f"{message[:max_chars]}... ({len(message) - max_chars} more characters cut)"
