"""HTTP plumbing shared by the routes: body limits, JSON decoding, errors, OpenAPI bodies."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from pydantic import BaseModel

from serve_ab.api.body_deadline import BodyDeadlines
from serve_ab.api.errors import client_message, cut, error_headers, http_status
from serve_ab.errors import BodyTimeout, BodyTooLarge, InvalidInput, ServeAbError, UnsupportedEncoding


def install_error_handlers(api: FastAPI) -> None:
    """Bad input is the client's problem: answer 4xx with a message, keep the replica up."""

    @api.exception_handler(ServeAbError)
    async def _serve_ab_error(request: Request, err: ServeAbError) -> JSONResponse:
        status = http_status(err)
        return JSONResponse({"error": client_message(err)}, status_code=status, headers=error_headers(status))

    @api.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, err: ClientDisconnect) -> Response:
        # The client went away mid-body: nobody to answer and nothing was done; no traceback
        # (the inference routes, fast_routes.py, send nothing at all). 499 is nginx's "client
        # closed request", what Ray's access line then shows.
        return Response(status_code=499)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        # Starlette's own 404 (no such route) and 405 (a method the route does not take), in
        # this API's {"error": ...} shape, with their headers (Allow); anything else (a
        # detail that is not text, a status without a body) as FastAPI answers it.
        if not (400 <= err.status_code < 500 and isinstance(err.detail, str)):
            return await http_exception_handler(request, err)
        return JSONResponse({"error": cut(f"{err.detail}: {request.method} {request.url.path}")},
                            status_code=err.status_code, headers=err.headers)

    @api.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own check of a route's parameters (?history=maybe): the same 422, in the
        # {"error": ...} shape of every other error of this API, naming the parameter.
        return JSONResponse({"error": cut(_parameter_errors(err))}, status_code=422)


def _parameter_errors(err: RequestValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "query")
        lines.append(f"{where or 'request'}: {problem.get('msg', 'invalid')} (got {problem.get('input')!r})")
    return "; ".join(lines)


async def read_json_unique_keys(request: Request, max_body_bytes: int, allow_empty: bool = False,
                                timeout_s: float | None = None) -> Any:
    """The decoded JSON body of a control or feedback route, refusing bodies over
    ``max_body_bytes`` before reading them and a key sent twice; ``allow_empty``: an empty
    body is None rather than an error; ``timeout_s``: as :func:`read_body`'s."""
    return decode_json_unique_keys(await read_body(request, max_body_bytes, timeout_s), allow_empty=allow_empty)


async def read_body(request: Request, max_body_bytes: int, timeout_s: float | None = None) -> bytes:
    """The raw body, refusing bodies over ``max_body_bytes`` (declared or streamed) before
    holding more than that, and bodies not all arrived within ``timeout_s`` (http.body_timeout_s)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise InvalidInput(f"content-length header is {declared!r}; expected a number") from None
        if declared_bytes > max_body_bytes:
            raise BodyTooLarge(_too_large(declared_bytes, max_body_bytes))
    # A client that sends its headers and then stalls holds one of router.max_ongoing_requests
    # (serve_ab/api/body_deadline.py): the body has timeout_s to arrive. One timer per loop,
    # not one per request, on the inference path.
    watch = BodyDeadlines.of_running_loop().watch(timeout_s) if timeout_s is not None else None
    # The ASGI messages themselves rather than request.stream(): the same bytes without its
    # per-chunk generator (this is on every inference request's path).
    chunks = []
    size_bytes = 0
    try:
        while True:  # a chunked body has no content-length to trust
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                size_bytes += len(chunk)
                if size_bytes > max_body_bytes:
                    raise BodyTooLarge(_too_large(size_bytes, max_body_bytes, at_least=True))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except Exception as err:
        if _receive_cancelled(err):
            raise ClientDisconnect() from None
        raise
    except asyncio.CancelledError:
        # Cancelled from outside (the client went away), alone or beside the deadline: not ours to answer.
        if watch is None or not watch.expired():
            raise
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g}s (http.body_timeout_s): "
                          f"{size_bytes} bytes came{'' if declared is None else f' of the {declared} declared'}; "
                          "send it within that time") from None
    finally:
        if watch is not None:
            watch.done()
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    # Several Content-Encoding lines are one list (RFC 9110 5.3), refused as "gzip, gzip" is.
    encodings = request.headers.getlist("content-encoding")
    return decompressed(raw, ", ".join(encodings), max_body_bytes) if encodings else raw


def _receive_cancelled(err: Exception) -> bool:
    """Whether ``receive()`` failed because the client went away: Ray Serve's replica reads the
    body from its proxy, which cancels that read when the client leaves; the replica may then
    raise the cancellation (``RayTaskError(TaskCancelledError)``) rather than its disconnect
    message (live: 1 of 122 clients that left mid-request, each an ERROR with a traceback and a
    500 for nobody). Known by name so that this module stays free of Ray."""
    return any(cls.__name__ == "TaskCancelledError" for cls in type(err).__mro__)


# What tritonclient's request_compression_algorithm sends (gzip.compress, zlib.compress), as
# Triton and KServe's servers decode it. 32 + 15: zlib detects a gzip or a zlib header itself.
_DECODED_ENCODINGS = ("gzip", "deflate", "identity")
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
# gzip allows members one after another (RFC 1952), and clients send one (tritonclient, curl
# --compressed) or a few (files joined with cat). Each costs a copy of the rest of the body
# (zlib's unused_data): a megabyte of 50,000 empty members held the replica's loop 0.7 s.
MAX_GZIP_MEMBERS = 64


def decompressed(raw: bytes, encoding: str, max_body_bytes: int) -> bytes:
    """``raw`` decoded from its Content-Encoding; the decoded body is held to ``max_body_bytes``
    too, so a small compressed body cannot expand past the limit (a zip bomb)."""
    name = encoding.strip().lower()
    if name == "identity":
        return raw
    if name not in _DECODED_ENCODINGS:
        raise UnsupportedEncoding(f"content-encoding is {encoding!r}; this server decodes request bodies in "
                                  f"{list(_DECODED_ENCODINGS)}, one at a time")
    parts: list[bytes] = []
    size_bytes = 0
    rest = raw
    while rest:  # gzip allows several members one after another (RFC 1952); each is decoded
        if len(parts) == MAX_GZIP_MEMBERS:
            raise InvalidInput(f"request body has more than {MAX_GZIP_MEMBERS} {name} members one after "
                               f"another (content-encoding: {encoding}); send it as one")
        decoder = zlib.decompressobj(_GZIP_OR_ZLIB)
        try:
            part = decoder.decompress(rest, max_body_bytes + 1 - size_bytes)
        except zlib.error as err:
            where = "" if not parts else f" after {len(raw) - len(rest)} bytes of valid data"
            raise InvalidInput(f"request body is not valid {name} data{where} (content-encoding: {encoding}): "
                               f"{err}") from None
        size_bytes += len(part)
        if size_bytes > max_body_bytes:
            raise BodyTooLarge(f"request body decompresses to more than {max_body_bytes} bytes; this experiment "
                               f"accepts at most {max_body_bytes} (http.max_body_bytes), counted after decoding")
        if not decoder.eof:
            raise InvalidInput(f"request body ends inside its {name} data (content-encoding: {encoding}): "
                               "it was cut short")
        parts.append(part)
        rest = decoder.unused_data
    if not parts:
        raise InvalidInput(f"request body is empty, but content-encoding says {encoding}; send the {name} data")
    return parts[0] if len(parts) == 1 else b"".join(parts)


# Every ASCII digit as "0", every other byte as a space: a run of 20 digits is then a plain
# substring search. Two C passes over the body, about 9x faster than the regex [0-9]{20}
# (0.7 against 5.8 us for a digit's request), which scanned from every digit.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 20


def has_long_number(raw: bytes) -> bool:
    """Whether ``raw`` holds 20 or more ASCII digits in a row."""
    return _LONG_NUMBER in raw.translate(_DIGITS_AS_ZERO)


def decode_json(raw: bytes, allow_empty: bool = False, what: str = "request body") -> Any:
    """``raw`` decoded as JSON, or a 400 naming ``what`` and the problem."""
    if not raw:
        if allow_empty:
            return None
        raise InvalidInput(f"{what} is empty; send a JSON object")
    # orjson first: several times faster, and it refuses what the slow path must look at
    # (lone surrogates, NaN and Infinity literals, numbers out of a double's range). It reads
    # an integer beyond 64 bits as a float, though: such a body (20 digits in a row) goes the
    # slow way, so that a long numeric user id is the same key over every protocol.
    if not has_long_number(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _decode_slowly(raw, what)


def decode_json_unique_keys(raw: bytes, allow_empty: bool = False, what: str = "request body") -> Any:
    """:func:`decode_json`, refusing an object that holds a key twice with a 400 naming it.
    orjson, as the standard library, keeps the last of them: an audited
    ``{"from_step": 99, "from_step": 1}`` got past promote's from_step guard, and a
    ``"converted": false, "converted": true`` counted a conversion. For the control and
    feedback bodies, which are small: the inference bodies keep orjson's speed."""
    if not raw:
        if allow_empty:
            return None
        raise InvalidInput(f"{what} is empty; send a JSON object")
    return _decode_slowly(raw, what, _refuse_duplicate_keys)


class RepeatedKey(InvalidInput):
    """A JSON object that holds one key twice (a 400 naming it)."""


def once_each(names: Iterable[str]) -> dict[bytes, int]:
    """Each of ``names`` allowed once in a body, as :func:`refuse_repeated` takes them."""
    return {quoted_key(name): 1 for name in names}


def quoted_key(name: str) -> bytes:
    """A JSON object key as a body spells it unescaped, quotes included."""
    return json.dumps(name, ensure_ascii=False).encode()


def refuse_repeated(raw: bytes, most: Mapping[bytes, int], what: str = "request body") -> None:
    """A 400 naming the key when the JSON body ``raw``, which :func:`decode_json` accepted,
    holds a key twice in one object.

    The inference bodies are decoded by orjson, which keeps the last of two: ``{"user_id":
    "alice", "user_id": "bob"}`` was served and counted as bob's while a proxy's log, or the
    client's own record, read alice's. ``most``: how often each key the route reads
    (:func:`quoted_key`) appears in the body without a repeat. Counting them is a pass
    over the body in C (5-7 us a digit's request with the caches cold, benchmarks/README.md).
    Only a body where one appears more often, or that holds an escape (a key spelt another way:
    ``\\u005f``, ``\\/``) or is UTF-16 or -32 (which decode_json reads too), is parsed again to
    look; then any key sent twice in one object is refused, as on the control routes. Nothing
    else of that parse counts: it refuses nesting orjson takes (past 995 levels)."""
    if not most:
        return
    for key, times in most.items():  # a loop, not any() over a generator: about 2 us less cold
        if raw.count(key) > times:
            break
    else:
        if b"\\" not in raw and raw.find(b"\x00", 0, 4) < 0:
            return
    try:
        decode_json_unique_keys(raw, what=what)
    except RepeatedKey:
        raise
    except InvalidInput:
        pass  # decode_json accepted the body: only a repeated key is refused here


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                # json.dumps: the key as JSON writes it, escapes included (it may hold anything).
                raise RepeatedKey(f"duplicate key {json.dumps(key[:80])} in the JSON body; send each key once")
            seen.add(key)
    return body


def _decode_slowly(raw: bytes, what: str, object_pairs_hook: Any = None) -> Any:
    try:
        # NaN and Infinity literals: allowed, for http.allow_non_finite
        body = json.loads(raw, object_pairs_hook=object_pairs_hook)
    except InvalidInput:  # the hook's (a ValueError too), already in words for the client
        raise
    except (ValueError, UnicodeDecodeError) as err:
        if "integer string conversion" in str(err):
            # Python's own limit (sys.get_int_max_str_digits), whose message tells the
            # server's programmer how to raise it; the client is told what it sent.
            raise InvalidInput(f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits; "
                               "no model input or key needs that many") from None
        raise InvalidInput(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise InvalidInput(f"{what} nests arrays or objects too deeply") from None
    # JSON may escape a lone UTF-16 surrogate ("\ud800"), which no UTF-8 text can hold: a key
    # hashed, an id echoed or a name logged would fail later. Only bodies that escape a
    # surrogate at all are walked.
    if b"\\ud" in raw or b"\\uD" in raw:
        _check_text(body)
    return body


def _check_text(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(f"request body holds a lone UTF-16 surrogate in {item[:40]!r}; "
                                   "send valid Unicode text") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _too_large(size_bytes: int, max_body_bytes: int, at_least: bool = False) -> str:
    return (
        f"request body is {'at least ' if at_least else ''}{size_bytes} bytes; this experiment "
        f"accepts at most {max_body_bytes} (http.max_body_bytes)"
    )


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the route reads and validates itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def add_openapi_schemas(api: FastAPI, models: list[type[BaseModel]]) -> None:
    """Publish the bodies named by :func:`json_body` in the app's OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version,
                                 description=api.description, routes=api.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats made valid JSON: NaN becomes null, infinities the
    strings "Infinity" and "-Infinity" (which ``float()`` reads back). A gate's ratio to a
    stable version at 0 is infinite, and Starlette refuses to encode that."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class RawResponse(Response):
    """A Starlette ``Response`` whose headers are given as ASGI wants them (lower-case latin-1
    bytes) and taken as they are: no per-request header normalisation."""

    def __init__(self, body: bytes, status_code: int, raw_headers: list[tuple[bytes, bytes]]):
        self.body = body
        self.status_code = status_code
        self.background = None
        self.raw_headers = raw_headers


_JSON_TYPE = (b"content-type", b"application/json")


def json_response(value: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer encoded by orjson (numpy arrays included; NaN and infinities as null),
    several times faster than Starlette's ``JSONResponse`` on an inference answer."""
    body = orjson.dumps(value, option=_ORJSON_OPTIONS)
    raw = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]
    if headers:
        raw += [(name.lower().encode("latin-1"), text.encode("latin-1")) for name, text in headers.items()]
    return RawResponse(body, status_code, raw)
