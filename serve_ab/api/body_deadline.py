"""Deadlines for request bodies (``http.body_timeout_s``): one timer per event loop, not one per request.

Ray's proxy hands a request to the router once its headers came: a client that then sends
nothing holds one of ``router.max_ongoing_requests`` while it keeps the connection, and 256
such connections (a slowloris) left the app answering nothing, health checks included. Each
body being read therefore has a deadline, after which its task is cancelled and the read
answers 408.

A ``loop.call_later`` per request did that at +2.3 us a request under uvloop (read_body 2.2 ->
4.5 us), doubling the body read on every inference request for a timer that nearly never
fires. Here a request costs a dict insert and a pop; one timer per loop waits for the earliest
deadline, and at it cancels the bodies past theirs and waits for the next. With bodies that
arrive, the timer fires about once per ``body_timeout_s`` and looks at the few then being read.

Usage, in the task that reads::

    watch = BodyDeadlines.of_running_loop().watch(timeout_s)
    try:
        ...await the body...
    except asyncio.CancelledError:
        if not watch.expired():  # someone else's cancel (the client went away): theirs
            raise
        ...answer 408...
    finally:
        watch.done()
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any


class BodyWatch:
    """One body being read: its task, and the cancel requests the task had before (Python 3.11+)."""

    __slots__ = ("_deadlines", "task", "_cancelling_before")

    def __init__(self, deadlines: BodyDeadlines, task: asyncio.Task, cancelling_before: int):
        self._deadlines = deadlines
        self.task = task
        self._cancelling_before = cancelling_before

    def expired(self) -> bool:
        """Whether the CancelledError being handled is this deadline's alone, taken back (uncancel)
        as ``asyncio.timeout`` does. False when the deadline did not fire, or when the task was also
        cancelled from elsewhere at the same time: that cancel is not swallowed into a 408."""
        if self.task not in self._deadlines.expired:
            return False
        uncancel = getattr(self.task, "uncancel", None)
        if uncancel is None:  # Python 3.10: no count of cancel requests to tell them apart
            return True
        return uncancel() <= self._cancelling_before

    def done(self) -> None:
        """The body was read, refused or given up: its deadline no longer applies."""
        deadlines = self._deadlines
        deadlines.reading.pop(self.task, None)
        if deadlines.expired:
            deadlines.expired.discard(self.task)


class BodyDeadlines:
    """The bodies being read on one event loop, by task, with their deadlines (``loop.time()``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # Weakly, and no timer handle kept (a handle holds its loop): this object is the value of a
        # weak dictionary keyed by the loop, and a strong reference back kept every loop ever used
        # (a test's each, closed) and this object alive for good.
        self._loop = weakref.ref(loop)
        self.reading: dict[asyncio.Task, float] = {}
        self.expired: set[asyncio.Task] = set()
        self._timer_at: float | None = None  # when the armed sweep runs; None: none armed
        self._armed = 0  # the armed sweep's number: one armed before it was brought forward does nothing

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop()

    @classmethod
    def of_running_loop(cls) -> BodyDeadlines:
        loop = asyncio.get_running_loop()
        last = _last
        if last is not None and last._loop() is loop:
            return last
        return _of_loop(loop)

    def watch(self, timeout_s: float) -> BodyWatch:
        """Start the current task's deadline, ``timeout_s`` from now."""
        loop = self._loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a body deadline needs a task to cancel")
        deadline = loop.time() + timeout_s
        self.reading[task] = deadline
        if self._timer_at is None or deadline < self._timer_at:
            self._arm(deadline)
        cancelling = getattr(task, "cancelling", None)
        return BodyWatch(self, task, cancelling() if cancelling is not None else 0)

    def _arm(self, at: float) -> None:
        loop = self._loop()
        if loop is None:
            return
        self._armed += 1
        loop.call_at(at, self._sweep, self._armed)
        self._timer_at = at

    def _sweep(self, armed: int) -> None:
        if armed != self._armed:  # brought forward since: the sweep armed then runs instead
            return
        self._timer_at = None
        loop = self._loop()
        if loop is None:
            return
        # A timer fires up to a clock tick early (uvloop rounds its delay to whole milliseconds): a
        # deadline that close is due now. Else the sweep armed again for it, for under a tick, and
        # ran again at once until the tick passed (about 100 sweeps a stalled body under uvloop).
        now = loop.time() + TIMER_EARLY_S
        earliest = None
        for task, deadline in list(self.reading.items()):
            if deadline <= now:
                del self.reading[task]
                if not task.done():
                    self.expired.add(task)
                    task.cancel()
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(earliest)


# How early a timer may fire: uvloop's, to the millisecond; asyncio's, to the clock's resolution.
TIMER_EARLY_S = 0.001


# The loop of the last call: nearly always the one asked for (a replica runs one loop), without
# the weak dictionary's lookup. Several loops (tests, threads) each keep their own.
_last: BodyDeadlines | None = None
_by_loop: weakref.WeakKeyDictionary[Any, BodyDeadlines] = weakref.WeakKeyDictionary()


def _of_loop(loop: asyncio.AbstractEventLoop) -> BodyDeadlines:
    global _last
    deadlines = _by_loop.get(loop)
    if deadlines is None:
        deadlines = _by_loop[loop] = BodyDeadlines(loop)
    _last = deadlines
    return deadlines
