"""The version that answered, on Ray Serve's own access line.

Ray Serve writes one access line per request ("POST /app 200 4.1ms", "CALL predict OK 2.0ms"),
with the request's id, once the answer has left, but it cannot know which version answered.
The router notes the version of each answered request (:class:`VersionsAnswered`) and a filter
on Ray Serve's logger (:class:`VersionOnAccessLine`) appends it to that request's line:
"POST /app 200 4.1ms version=v2", or "version=-" when no version answered (a 400, a failed
call). So serve-ab's line is plain Ray Serve's, written when Ray writes it and costing what it
costs; ``router.access_log: false`` is Ray's ``logging_config.enable_access_log: false``.
The line shows what Ray's does: the app's route prefix, not the path below it.

A gRPC call that failed is answered with its status code set on Ray's gRPC context and an empty
response, not raised (raised, Ray would log a traceback for each bad request), so Ray's line
reads ``OK`` for it; the filter puts the code there instead ("CALL digits-ab INVALID_ARGUMENT
3.4ms version=-"; "CALL digits-ab INTERNAL 3.4ms version=v2" for one whose answer could not be
encoded, :meth:`VersionsAnswered.failed`).

An earlier design wrote a line of its own from the router's code and switched Ray's off.
Written in the request, before Ray had handed the answer on, it cost 0.3-0.45 ms of latency
at concurrency 1 over HTTP; held for 2 ms or put on the loop's next turn, no less
(``benchmarks/README.md``, sixth and ninth rounds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

RAY_SERVE_LOGGER = "ray.serve"  # the logger Ray Serve's replicas write their access lines to
# Set by Ray Serve on its access line's record (ray/serve/_private/replica.py), with the request's id.
RAY_ACCESS_LINE_ATTR = "serve_access_log"
RAY_REQUEST_ID_ATTR = "request_id"
# Request ids with notes not yet taken: the requests in flight, and more. Beyond it the oldest
# go, so that notes no line takes (Ray's logger above INFO, a client gone before its answer)
# stay bounded.
MAX_NOTES = 4096


class FailedAfterAnswer(str):
    """A noted version whose call then failed (a gRPC answer that could not be encoded): its
    line names the version and reads the call's code, not Ray's ``OK``."""


class VersionsAnswered:
    """request id -> the versions that answered it, until its access lines take them.

    ``note`` runs in the router's code and ``take`` in Ray's logging call, which may be on
    another thread (an isolated router runs its code in a thread of its own), hence the lock.
    Two requests may share an id (a client resending its ``x-request-id``): each keeps its
    note, taken first noted, first taken.
    """

    def __init__(self, max_notes: int = MAX_NOTES):
        self.max_notes = max_notes
        # A dict keeps insertion order too, and its code is warm in any Python process: with
        # the caches emptied between requests, a note took 18 us with an OrderedDict, 10 with
        # a dict (benchmarks/README.md, eleventh round). Where no line takes the notes (Ray's
        # logger above INFO), evicting the oldest then skips the deleted entries before it:
        # 2.4 us a note at MAX_NOTES against 0.7 for an OrderedDict, in a loop (growing with
        # max_notes: 14 us at 100,000).
        self._versions: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def note(self, request_id: str, version: str) -> None:
        with self._lock:
            noted = self._versions.get(request_id)
            if noted is None:
                self._versions[request_id] = [version]
                if len(self._versions) > self.max_notes:
                    del self._versions[next(iter(self._versions))]  # the oldest
            else:
                noted.append(version)

    def failed(self, request_id: str) -> None:
        """The call of ``request_id`` failed after a version answered it (noted last)."""
        with self._lock:
            noted = self._versions.get(request_id)
            if noted:
                noted[-1] = FailedAfterAnswer(noted[-1])

    def take(self, request_id: str) -> str | None:
        with self._lock:
            noted = self._versions.get(request_id)
            if noted is None:
                return None
            version = noted.pop(0)
            if not noted:
                del self._versions[request_id]
            return version

    def __len__(self) -> int:
        return len(self._versions)


def with_grpc_code(line: str, grpc_status: Callable[[], str | None]) -> str:
    """Ray's access line with the gRPC call's error code for its ``OK``: "CALL app OK 2.0ms"
    -> "CALL app INVALID_ARGUMENT 2.0ms" (the status is the word before the latency, as
    Ray's ``access_log_msg`` writes it); any other line as it is."""
    words = line.rsplit(" ", 2)
    if len(words) == 3 and words[1] == "OK" and words[2].endswith("ms"):
        status = grpc_status()
        if status is not None and status != "OK":
            return f"{words[0]} {status} {words[2]}"
    return line


class VersionOnAccessLine(logging.Filter):
    """Appends ``version=<name>`` to Ray Serve's access lines; lets every record through.

    The version is also the record's ``model_version`` (None when no version answered):
    Ray's JSON logs give every such attribute a field of its own; its text lines ignore it.
    Only records with a request id: Ray's debug lines about a request starting carry the
    access-line mark too, but get their id later, from a handler's filter. A line Ray wrote
    ``OK`` for a gRPC call answered with an error code shows that code: ``grpc_status`` reads
    it from the request's Ray context (:func:`serve_ab.serving.router.grpc_code_set`; None
    here, where no Ray is imported, reads none).
    """

    def __init__(self, versions: VersionsAnswered, grpc_status: Callable[[], str | None] | None = None):
        super().__init__()
        self.versions = versions
        self.grpc_status = grpc_status

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = getattr(record, RAY_REQUEST_ID_ATTR, None)
        if request_id and getattr(record, RAY_ACCESS_LINE_ATTR, False):
            version = self.versions.take(request_id)
            line: Any = record.msg
            # Only a call no version answered, or one that failed after its answer (in encoding
            # it), reads the gRPC context, so an answered request's line costs what it did.
            if (version is None or version.__class__ is FailedAfterAnswer) and self.grpc_status is not None \
                    and isinstance(line, str):
                line = with_grpc_code(line, self.grpc_status)
            record.msg = f"{line} version={version or '-'}"
            record.model_version = version
        return True


def name_versions_on_access_lines(logger: logging.Logger, versions: VersionsAnswered,
                                  grpc_status: Callable[[], str | None] | None = None) -> None:
    """Puts the filter on ``logger`` (Ray Serve's), in place of one put there before.

    On the logger, not a handler: Ray Serve replaces its handlers when it reconfigures
    logging (a new ``logging_config``) and keeps the logger's filters.
    """
    for old in [f for f in logger.filters if isinstance(f, VersionOnAccessLine)]:
        logger.removeFilter(old)
    logger.addFilter(VersionOnAccessLine(versions, grpc_status))


class RoutineCallsOff(logging.Filter):
    """Drops Ray Serve's access lines of the routers' routine calls to the controller, when
    they succeeded: each router's long poll (``CALL wait_for_update OK 2003.0ms`` every 2 s),
    its report every second, the feedback it passes on and Prometheus' scrapes. In the
    console of ``serve run`` they buried everything else. Failed ones, and every other call
    (an operator's action, status, the report), keep their line."""

    def __init__(self, methods: frozenset[str]):
        super().__init__()
        self.methods = methods

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, RAY_ACCESS_LINE_ATTR, False) or not isinstance(record.msg, str):
            return True
        words = record.msg.split(" ", 3)  # "CALL <method> <status> <latency>"
        return not (len(words) == 4 and words[0] == "CALL" and words[1] in self.methods and words[2] == "OK")


def drop_routine_calls(logger: logging.Logger, methods: frozenset[str]) -> None:
    """Puts :class:`RoutineCallsOff` on ``logger`` (Ray Serve's), in place of one put there before."""
    for old in [f for f in logger.filters if isinstance(f, RoutineCallsOff)]:
        logger.removeFilter(old)
    logger.addFilter(RoutineCallsOff(methods))
