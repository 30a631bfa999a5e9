"""The inference routes as plain ASGI in front of FastAPI, which keeps every other route.

Profiling the router replica under load (``benchmarks/profile_router.py``, findings in
``benchmarks/README.md``) showed FastAPI's path costing a request several times what
serve-ab's own code does: five middlewares, route matching past every route, dependency
solving, and a thread-pool hop for each synchronous dependency. The inference routes need
none of it. :class:`FastRoutes` matches them first, on method and path alone, and calls the
route function straight away with a Starlette ``Request``; FastAPI still declares the same
routes, so the OpenAPI document and ``/docs`` describe them as before, and serves every
other path (control, figures, metadata, docs) unchanged.

The request a route gets is Starlette's with one change (:class:`FastRequest`): its headers'
``get`` scans them once and raises nothing. Starlette's, the ``Mapping`` mixin's, raises and
catches a ``KeyError`` for each absent header, and the pin header is absent from nearly every
request.

A route's :mod:`serve_ab.errors` exception becomes the same 4xx answer FastAPI's handler
gives (:func:`serve_ab.api.errors.http_status`); any other exception a 500, logged, as
Starlette's ``ServerErrorMiddleware`` does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from serve_ab.api.errors import client_message, error_headers, http_status
from serve_ab.api.http_util import json_response
from serve_ab.errors import ServeAbError

logger = logging.getLogger("ray.serve")

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    """``POST /v2/models/{model}/infer``-style path: each ``{name}`` matches one path segment
    (as FastAPI's) and is passed to ``handler`` by name, after the request."""

    method: str
    path: str
    handler: Handler

    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(self.path)) + "$")


class ScopeHeaders(Headers):
    """Starlette's request headers, ``get`` without an exception per absent header.

    In the router's request path with the caches cold, Starlette's request and this one taking
    turns call by call, this one costs 5.5-6 us less a request (benchmarks/README.md, nineteenth
    round). Like Starlette's ``headers[name]``, it answers the first line of that name,
    case-insensitively."""

    def __init__(self, scope: dict):
        super().__init__(scope=scope)
        self._lines: list[tuple[bytes, bytes]] = scope["headers"]

    def get(self, key: str, default: Any = None) -> Any:
        wanted = key.lower().encode("latin-1")
        for name, value in self._lines:
            if name == wanted:
                return value.decode("latin-1")
        return default


class FastRequest(Request):
    """A Starlette ``Request`` whose ``headers`` are :class:`ScopeHeaders`."""

    _scope_headers: ScopeHeaders | None = None

    @property
    def headers(self) -> Headers:
        if self._scope_headers is None:
            self._scope_headers = ScopeHeaders(self.scope)
        return self._scope_headers


class FastRoutes:
    def __init__(self, app: Any, routes: list[FastRoute]):
        self.app = app
        self.exact = {(r.method, r.path): r.handler for r in routes if "{" not in r.path}
        self.patterns = [(r.method, r.pattern(), r.handler) for r in routes if "{" in r.path]

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        handler = self.exact.get((method, path))
        if handler is not None:
            return handler, {}
        for wanted, pattern, handler in self.patterns:
            if method == wanted and (m := pattern.match(path)):
                return handler, m.groupdict()
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        found = self.match(scope["method"], route_path(scope)) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        handler, params = found
        try:
            response = await handler(FastRequest(scope, receive), **params)
        except ServeAbError as err:
            status = http_status(err)
            response = json_response({"error": client_message(err)}, status_code=status, headers=error_headers(status))
        except ClientDisconnect:
            return  # the client went away mid-body: nobody to answer, nothing was served
        except Exception:
            logger.exception("serve-ab: %s %s failed", scope["method"], scope["path"])
            response = PlainTextResponse("Internal Server Error", status_code=500)
        await response(scope, receive, send)


def route_path(scope: dict) -> str:
    """The path below the app's route prefix (Serve puts the prefix in ``root_path``)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path
