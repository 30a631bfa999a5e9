"""One log line per request, naming the version that answered it.

Ray Serve's own access line ("POST /predict 200 1.2ms") cannot say which version served a
request, so the router turns it off (``enable_access_log: False``) and writes this one
instead. Ray's log formatter prefixes every line a replica writes during a request with
that request's id, so each line about a request carries both the id and the version.
A plain ASGI middleware (not FastAPI's ``BaseHTTPMiddleware``) keeps the cost to a few
microseconds.

A handle call's line can wait until the answer has left (:class:`AccessLines`, ``hold``).
Through Ray's handlers (filters, formatter, a write to the replica's log file) a line costs
microseconds in a loop but a tenth of a millisecond or more of a call's latency in a busy
replica, and the caller waits for the line: Ray hands a handle call's return value over
only once the method has returned. The router holds the line of a ``predict`` call that
finished with no other ``predict`` in flight (:class:`CallsInFlight`) for ``LINE_DELAY_S``;
with others in flight it is written at once, as there is no idle moment to wait for, and a
held batch written during a later call costs that call instead. A held line keeps its
figure (measured in the call) and its request id (in ``extra``); it is written in a copy of
the call's context, so that handlers reading Ray's request context (JSON logs' route and
app, a user's own handlers) see the call's. Its timestamp is 2 ms late and it may follow
later requests' lines. An HTTP request's line is written at once: holding it made
concurrency 1 slower, not faster, in paired runs (``benchmarks/README.md``, sixth round).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

VERSION_HEADER = b"x-model-version"
# How long a held line waits, so that the answer leaves first: handing a return value to
# Ray's core takes microseconds; a line written 2 ms late is as good as on time.
LINE_DELAY_S = 0.002

# Ray Serve's handlers write a record with log_to_stderr False to the replica's log file only,
# not to stderr as well (profiled: the stderr copy made this line cost twice what Ray's own
# access line costs a plain deployment); elsewhere the attribute is ignored. Ray's filter that
# stamps the request id sits on the stderr handler, so such a record carries its id itself.
def line_extra(request_id: str | None) -> dict[str, Any]:
    """The ``extra`` of an access line: file only, with the request's id."""
    return {"log_to_stderr": False, "request_id": request_id} if request_id else {"log_to_stderr": False}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class CallsInFlight:
    """How many calls of a method are being served: ``with calls:`` around each."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> CallsInFlight:
        self.count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.count -= 1

    @property
    def none(self) -> bool:
        return self.count == 0


class AccessLines:
    """Access lines, written at once or (``hold``) after :data:`LINE_DELAY_S` on the same loop.

    For one event loop at a time (the replica's): a held line while another loop that is
    still running holds lines is written at once, and one held on a loop that has stopped
    is written by the next. Outside a running event loop a held line is written at once too.
    :meth:`flush` writes what is held (a stopping replica calls it); a line that fails to be
    written is reported on stderr, as logging's handlers do, and the others still are.
    """

    def __init__(self, logger: logging.Logger, delay_s: float = LINE_DELAY_S):
        self.logger = logger
        self.delay_s = delay_s
        self._held: list[tuple[contextvars.Context, str, tuple[Any, ...], dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def write(self, message: str, *args: Any, request_id: str | None, hold: bool = False) -> None:
        extra = line_extra(request_id)
        loop = _running_loop() if hold and self.delay_s > 0 else None
        if loop is None:
            self.logger.info(message, *args, extra=extra)
            return
        if self._timer is not None and self._timer_loop is not loop:
            if self._timer_loop is not None and self._timer_loop.is_running():
                self.logger.info(message, *args, extra=extra)  # another thread's loop owns what is held
                return
            self.flush()  # held on a loop that has stopped (tests run one loop after another)
        self._held.append((contextvars.copy_context(), message, args, extra))
        if self._timer is None:
            self._timer, self._timer_loop = loop.call_later(self.delay_s, self.flush), loop

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_loop = None
        held, self._held = self._held, []
        for context, message, args, extra in held:
            try:
                context.run(self.logger.info, message, *args, extra=extra)
            except Exception:  # a filter's error: lose this line only, never a request
                traceback.print_exc()

    def __len__(self) -> int:
        return len(self._held)


class AccessLog:
    """``request_id``: the id of the request being served (Ray Serve's), for the line."""

    def __init__(self, app: Any, lines: AccessLines, request_id: Callable[[], str | None] = lambda: None):
        self.app = app
        self.lines = lines
        self.request_id = request_id

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_s = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        version = "-"

        async def send_and_note(message: dict) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == VERSION_HEADER:
                        version = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.lines.write("%s %s %d version=%s %.1fms", scope["method"], scope["path"], status,
                             version, (time.perf_counter() - started_s) * 1000.0,
                             request_id=self.request_id())
