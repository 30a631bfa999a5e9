"""http.body_timeout_s: one timer per loop, a 408 only for the deadline's own cancel."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.requests import Request

from serve_ab.api.http_util import read_body
from serve_ab.errors import BodyTimeout

BODY = b'{"inputs": [[1.0, 2.0]]}'


def whole() -> Request:
    """A request whose body comes whole in its first message."""

    async def receive():
        return {"type": "http.request", "body": BODY, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-length", str(len(BODY)).encode())]}
    return Request(scope, receive)


class Stalled:
    """A request whose client sent its headers and then nothing (a slowloris)."""

    headers = {"content-length": "10"}

    async def receive(self):
        await asyncio.Event().wait()


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the timers armed on it."""

    armed = 0

    def call_at(self, when, callback, *args, context=None):
        self.armed += 1
        return super().call_at(when, callback, *args, context=context)


def run_on(loop: asyncio.AbstractEventLoop, coroutine):
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def test_bodies_read_on_one_loop_arm_one_timer_not_one_each():
    """A loop.call_later per request cost read_body +2.3 us (2.2 -> 4.5 us under uvloop) on every
    inference request, for a timer that nearly never fires; one timer per loop serves them all."""
    loop = CountingLoop()

    async def main():
        for _ in range(100):
            assert await read_body(whole(), 8192, timeout_s=30.0) == BODY

    run_on(loop, main())
    assert loop.armed == 1


def test_a_read_body_is_not_cancelled_later_in_its_task():
    """The rest of the request (the model's call) runs in the same task: a deadline past once the
    body came must not cancel it."""

    async def main():
        assert await read_body(whole(), 8192, timeout_s=0.01) == BODY
        await asyncio.sleep(0.05)  # past the body's deadline
        return "served"

    assert asyncio.run(main()) == "served"


def test_a_shorter_deadline_after_a_longer_one_still_fires_and_only_its_own():
    """Two apps (or tests) on one loop with different http.body_timeout_s: the timer waiting for the
    later deadline is brought forward, and the body with the later deadline keeps reading."""

    async def main():
        slow = asyncio.ensure_future(read_body(Stalled(), 8192, timeout_s=3600))
        await asyncio.sleep(0)
        with pytest.raises(BodyTimeout, match="0.02s"):
            await asyncio.wait_for(read_body(Stalled(), 8192, timeout_s=0.02), timeout=10)
        assert not slow.done()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

    asyncio.run(main())


def test_a_cancel_from_elsewhere_at_the_deadline_stays_a_cancel():
    """The deadline and Ray's cancel (the client went away) landing before the task runs again:
    the deadline's cancel was taken back (uncancel) and the other swallowed into a 408 answered to
    nobody, the task's cancel lost, as asyncio.timeout does not."""

    async def main():
        loop = asyncio.get_running_loop()
        reading = asyncio.ensure_future(read_body(Stalled(), 8192, timeout_s=0.01))
        await asyncio.sleep(0)  # reading now waits for the body
        loop.call_later(0.02, reading.cancel)  # the other cancel, right after the deadline
        time.sleep(0.1)  # both due before the loop runs again: both land before the task resumes
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(main())


def test_loops_that_read_bodies_are_freed_once_closed():
    """The loop's deadlines were the value of a weak dictionary keyed by the loop, and held the loop
    (and its armed timer's handle did): every loop that ever read a body stayed alive, closed, with
    its deadlines (50 of 50 in a row of 50 loops)."""
    import gc
    import weakref

    freed = []
    for timeout_s in (30.0, 0.0):  # a timer armed past the loop's close, and one that fired
        loops = []
        for _ in range(5):
            loop = asyncio.new_event_loop()
            run_on(loop, read_body(whole(), 8192, timeout_s=timeout_s))
            loops.append(weakref.ref(loop))
            del loop
        gc.collect()
        freed.append(sum(ref() is None for ref in loops))
    assert freed == [5, 5]


class EarlyTimerLoop(asyncio.SelectorEventLoop):
    """A loop whose timers the test fires, at the time it says: uvloop rounds a timer's delay to whole
    milliseconds, so a timer runs up to half a millisecond before the ``when`` it was given."""

    def __init__(self):
        super().__init__()
        self.now_s = 1000.0
        self.timers: list[tuple[float, object, tuple]] = []

    def time(self):
        return self.now_s

    def call_at(self, when, callback, *args, context=None):
        self.timers.append((when, callback, args))
        return asyncio.TimerHandle(when, lambda: None, (), self)

    def fire_due(self, early_s: float) -> int:
        """Runs the timers due ``early_s`` from now; how many ran."""
        due = [timer for timer in self.timers if timer[0] <= self.now_s + early_s]
        self.timers = [timer for timer in self.timers if timer not in due]
        for _, callback, args in due:
            callback(*args)
        return len(due)


def test_a_timer_that_fires_a_tick_early_cancels_the_body_rather_than_spinning():
    """Under uvloop the sweep came up to a millisecond before the deadline, found it not yet due, and
    armed again for under a millisecond, which uvloop runs at once: the loop spun (3,861 sweeps for
    20 stalled bodies) until its clock ticked. A deadline within a tick is due."""
    loop = EarlyTimerLoop()

    async def main():
        reading = asyncio.ensure_future(read_body(Stalled(), 8192, timeout_s=5.0))
        await asyncio.sleep(0)  # reading now waits for the body
        loop.now_s += 5.0 - 0.0005  # the timer fires half a millisecond early
        assert loop.fire_due(early_s=0.0005) == 1
        assert loop.fire_due(early_s=0.0005) == 0  # no sweep armed again for the same deadline
        with pytest.raises(BodyTimeout, match="5s"):
            await asyncio.wait_for(reading, timeout=10)

    run_on(loop, main())
