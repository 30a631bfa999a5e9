"""Business feedback joined to the version that served the request (pure).

Clients send ``{request_id, name, value}`` (a revenue, a rating) or
``{request_id, name, converted}`` after the fact; the join keeps which version served
each recent request id, bounded in count and age, so memory stays flat under any load.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from serve_ab.errors import Conflict, Forbidden
from serve_ab.rollout.gates import ConversionEvent, FeedbackEvent

MAX_REQUESTS = 500_000
REQUEST_TTL_S = 3600.0
MAX_EVENTS = 200_000
# Feedback can overtake the router's report of the request it is about (reports are
# batched); it waits this long for that report before it is dropped.
PENDING_TTL_S = 30.0
MAX_PENDING = 50_000


@dataclass
class FeedbackJoin:
    max_requests: int = MAX_REQUESTS
    request_ttl_s: float = REQUEST_TTL_S
    #: How long feedback waits for its request's report; the controller raises it above
    #: its routers' report interval (one router's report must not expire another's request).
    pending_ttl_s: float = PENDING_TTL_S
    #: Called with (version, name, value, converted, t_s, unit, split) for every joined
    #: feedback, e.g. to keep cumulative totals beside the windows the gates read; ``unit``
    #: and ``split`` are the request's (its assignment key's hash or bucket, and its routing epoch).
    on_emit: Callable[..., None] | None = None
    #: Keep the joined events for :meth:`events` (a rollout's gate windows need them).
    keep_events: bool = True
    #: Called with the number of feedbacks dropped unjoined: their request's report never
    #: came within pending_ttl_s, or too many were waiting.
    on_unjoined: Callable[[int], None] | None = None
    #: Called for every feedback refused as a repeat of one already counted.
    on_duplicate: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        # A 64-bit hash of (request id, name) of every feedback counted, with when, for as long
        # as a token can bring it back: one report per request and metric, however often a
        # client sends it. Hashes keep it small and easy to save (see reported_since).
        self._reported: collections.OrderedDict[int, float] = collections.OrderedDict()
        # The latest report time forgotten to make room (max_requests reports within a token's
        # life): a repeat of an answer given before it could no longer be told from a first
        # report, so such answers' feedback is refused, not counted twice (see add).
        self._forgotten_through_s = -math.inf
        self._served: collections.OrderedDict[str, tuple[str, float, int | None, int]] = collections.OrderedDict()
        self._values: collections.deque[FeedbackEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._conversions: collections.deque[ConversionEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._pending: collections.OrderedDict[str, list[tuple]] = collections.OrderedDict()

    def remember(self, request_id: str, version: str, t_s: float, unit: int | None = None,
                 split: int = -1) -> None:
        self._served[request_id] = (version, t_s, unit, split)
        while len(self._served) > self.max_requests:
            self._served.popitem(last=False)
        for name, value, converted, at_s in self._pending.pop(request_id, ()):
            self._emit(version, name, value, converted, at_s, unit, split)

    def expire(self, now_s: float) -> None:
        """Drop what is past its time: feedback that waited pending_ttl_s for its request
        (counted unjoined), and requests and reports older than ``request_ttl_s``."""
        while self._pending:
            _, waiting = next(iter(self._pending.items()))
            if waiting[0][3] >= now_s - self.pending_ttl_s:
                break
            self._drop_oldest_pending()
        while self._served:
            _, (_, t_s, _, _) = next(iter(self._served.items()))
            if t_s >= now_s - self.request_ttl_s:
                break
            self._served.popitem(last=False)
        while self._reported:
            _, t_s = next(iter(self._reported.items()))
            if t_s >= now_s - self.request_ttl_s:
                break
            self._reported.popitem(last=False)

    def add(self, request_id: str, name: str, value: float | None, converted: bool | None,
            now_s: float, version: str | None = None, unit: int | None = None, split: int = -1,
            count_repeat: bool = True, answered_after_s: float | None = None) -> str | None:
        """Record feedback; returns the version it joined to, or None while it waits for
        the request's report (dropped after pending_ttl_s if none comes).

        ``version``: the version that served the request, when the client proved it (a
        feedback token); the feedback is then counted at once. A second report of the same
        request and name raises :class:`~serve_ab.errors.Conflict` (``count_repeat``: and is
        counted as a client's repeat; not for a router's resend to a restarted controller).
        ``answered_after_s``: a time the answer came after (its token says); feedback on an answer
        that may be older than the reports forgotten to make room is :class:`~serve_ab.errors.Forbidden`,
        as a repeat of it would be counted again.
        """
        self.expire(now_s)
        key = self._once(request_id, name, count_repeat)
        if answered_after_s is not None and answered_after_s <= self._forgotten_through_s:
            raise Forbidden(f"feedback on this answer can no longer be checked for a repeat: more than "
                            f"{self.max_requests} reports came since it was answered, "
                            f"{now_s - answered_after_s:.0f}s ago, and the oldest were forgotten; report "
                            "feedback sooner after the answer")
        if version is not None:
            self._emit(version, name, value, converted, now_s, unit, split)
            self._mark(key, now_s)  # only once counted: a refused one may be sent again, mended
            return version
        served = self._served.get(request_id)
        if served is None:
            self._pending.setdefault(request_id, []).append((name, value, converted, now_s))
            self._mark(key, now_s)
            while len(self._pending) > MAX_PENDING:
                self._drop_oldest_pending()
            return None
        self._emit(served[0], name, value, converted, now_s, served[2], served[3])
        self._mark(key, now_s)
        return served[0]

    @staticmethod
    def reported_key(request_id: str, name: str) -> int:
        raw = f"{request_id}\x00{name}".encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")

    def reported_since(self, since_s: float) -> list[tuple[int, float]]:
        """The (key, time) of every feedback counted at or after ``since_s``, oldest first:
        what a controller saves so that a replay after its restart is still refused."""
        out = []
        for key in reversed(self._reported):
            t_s = self._reported[key]
            if t_s < since_s:
                break
            out.append((key, t_s))
        out.reverse()
        return out

    def restore_reported(self, entries: Iterable[tuple[int, float]]) -> None:
        """Remember feedback counted before a restart (as :meth:`reported_since` gave it)."""
        for key, t_s in sorted(entries, key=lambda entry: entry[1]):
            self._reported.setdefault(int(key), float(t_s))
        self._forget_beyond_max()

    def _once(self, request_id: str, name: str, count_repeat: bool = True) -> int:
        """The key of this report, or :class:`Conflict` when it was counted already."""
        key = self.reported_key(request_id, name)
        if key in self._reported:
            if self.on_duplicate is not None and count_repeat:
                self.on_duplicate()
            # Not the id: a token-proven one carries the answer's nonce ("<request_id>#<nonce>"),
            # which the client never sent; it knows which request it reported on.
            raise Conflict(f"feedback {name!r} for this request was reported already; "
                           "each request takes one report per metric")
        return key

    def _mark(self, key: int, now_s: float) -> None:
        self._reported[key] = now_s
        self._forget_beyond_max()

    def _forget_beyond_max(self) -> None:
        while len(self._reported) > self.max_requests:
            _, t_s = self._reported.popitem(last=False)
            self._forgotten_through_s = max(self._forgotten_through_s, t_s)

    def _drop_oldest_pending(self) -> None:
        _, dropped = self._pending.popitem(last=False)
        if self.on_unjoined is not None:
            self.on_unjoined(len(dropped))

    def _emit(self, version: str, name: str, value: float | None, converted: bool | None,
              t_s: float, unit: int | None = None, split: int = -1) -> None:
        if self.on_emit is not None:
            self.on_emit(version, name, value, converted, t_s, unit, split)
        if not self.keep_events:
            return
        if converted is not None:
            self._conversions.append(ConversionEvent(version, name, bool(converted), t_s, unit))
        else:
            self._values.append(FeedbackEvent(version, name, float(value), t_s, unit))

    def events(self, since_s: float) -> tuple[list[FeedbackEvent], list[ConversionEvent]]:
        return ([e for e in self._values if e.t_s >= since_s],
                [e for e in self._conversions if e.t_s >= since_s])

    def counts(self) -> dict[str, int]:
        return {"requests_remembered": len(self._served), "reported": len(self._reported),
                "values": len(self._values),
                "conversions": len(self._conversions), "pending": len(self._pending)}
