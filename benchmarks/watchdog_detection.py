"""How often does the watchdog mark down an isolated version whose calls stall, by traffic?

    python -m benchmarks.watchdog_detection --quick   # 3 rates x 30 stalls: ~6 s on 2 cores
    python -m benchmarks.watchdog_detection           # the README's 6 rates x 100 stalls: ~45 s

The real :class:`serve_ab.serving.core.watchdog.WatchedVersion` (default settings: ticks of
0.25 s, stall_s 1, probe_timeout_s 2) on a virtual clock advanced in 5-ms steps, no Ray. Calls
arrive as a Poisson stream at each rate and take ``--call-ms`` each; after ``--warm-s`` of
traffic (plus a random fraction of a second, so that the stall falls anywhere between two
ticks) every call from then on, and the probes, wait without end: the replica hung, died and is
being replaced, or Ray Serve took the last replica of a ``min_replicas: 0`` version and a new
one is starting (calls in flight at that moment finish; with calls this short the three read
the same). Each stall is followed for ``--after-s``; printed, for a version that keeps its
replicas and for one that may scale to zero (``WatchdogSettings.scales_to_zero``): in how many
stalls it was marked down, and the median time from the stall. A stall not marked down holds
each call until ``isolation.call_timeout_s`` (60 s by default) cuts it.

Whether that is right depends on why the calls stall, which the router cannot see: for a dead
or hung replica the mark-down is wanted (the fallback serves meanwhile); for a version Ray took
to zero replicas it is not (with no fallback, its requests get 503s until the new replica
starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
from dataclasses import dataclass

import numpy as np

from serve_ab.serving.core.watchdog import WatchdogSettings, WatchedVersion

STEP_S = 0.005


class _Clock:
    """Virtual seconds; ``sleep`` returns when the driver has moved the clock past its end."""

    def __init__(self) -> None:
        self.t_s = 0.0
        self.sleepers: list[tuple[float, asyncio.Future]] = []

    def __call__(self) -> float:
        return self.t_s

    async def sleep(self, delay_s: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t_s + delay_s - 1e-9, woken))
        await woken

    def wake(self) -> None:
        due = [woken for end_s, woken in self.sleepers if end_s <= self.t_s]
        self.sleepers = [(end_s, woken) for end_s, woken in self.sleepers if end_s > self.t_s]
        for woken in due:
            if not woken.done():
                woken.set_result(None)


class _Call:
    def __init__(self, began_s: float, ends_s: float) -> None:
        self.future = asyncio.get_running_loop().create_future()
        self.began_s, self.ends_s = began_s, ends_s

    def __await__(self):
        return self.future.__await__()

    def cancel(self) -> None:
        if not self.future.done():
            self.future.set_exception(RuntimeError("cancelled"))


class _Replica:
    """Answers each call ``call_s`` after it began, unless it began at or after ``stall_from_s``."""

    name = "deployment 'version-v1'"

    def __init__(self, clock: _Clock, call_s: float, stall_from_s: float) -> None:
        self.clock, self.call_s, self.stall_from_s = clock, call_s, stall_from_s
        self.in_flight: list[_Call] = []

    def predict(self, batch: np.ndarray) -> _Call:
        call = _Call(self.clock(), self.clock() + self.call_s)
        self.in_flight.append(call)
        return call

    def describe(self) -> _Call:
        return self.predict(np.zeros((0, 1)))

    def answer_due(self) -> None:
        now_s = self.clock()
        for call in [c for c in self.in_flight if c.ends_s <= now_s and c.began_s < self.stall_from_s]:
            self.in_flight.remove(call)
            if not call.future.done():
                call.future.set_result(np.zeros((1, 1)))


@dataclass(frozen=True)
class Outcome:
    rate_hz: float
    scales_to_zero: bool
    stalls: int
    marked_down: int
    median_s: float | None  # from the stall to the mark-down, of those marked down


async def _one_stall(rate_hz: float, scales_to_zero: bool, seed: int, call_s: float,
                     warm_s: float, after_s: float) -> float | None:
    rng = random.Random(seed)
    clock = _Clock()
    stall_s = warm_s + rng.random()
    replica = _Replica(clock, call_s, stall_s)
    version = WatchedVersion("v1", replica, lambda err: False, WatchdogSettings(scales_to_zero=scales_to_zero),
                             sleep=clock.sleep, clock=clock)
    batch = np.zeros((1, 1))

    async def request() -> None:
        try:
            await version.predict(batch)
        except Exception:  # marked down: served elsewhere
            pass

    requests = []
    next_arrival_s = rng.expovariate(rate_hz)
    try:
        while clock() < stall_s + after_s:
            clock.t_s += STEP_S
            replica.answer_due()
            while next_arrival_s <= clock():
                requests.append(asyncio.ensure_future(request()))
                next_arrival_s += rng.expovariate(rate_hz)
            clock.wake()
            for _ in range(6):  # the woken tasks, and what they wake in turn, run
                await asyncio.sleep(0)
            if version.down_reason is not None:
                return clock() - stall_s
        return None
    finally:
        for task in requests:
            task.cancel()
        await asyncio.sleep(0)


def measure(rate_hz: float, scales_to_zero: bool, stalls: int, call_s: float = 0.005,
            warm_s: float = 5.0, after_s: float = 15.0) -> Outcome:
    times_s = [asyncio.run(_one_stall(rate_hz, scales_to_zero, seed, call_s, warm_s, after_s))
               for seed in range(stalls)]
    found_s = [t for t in times_s if t is not None]
    return Outcome(rate_hz, scales_to_zero, stalls, len(found_s),
                   statistics.median(found_s) if found_s else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="rates 2, 4, 10 req/s, 30 stalls each")
    parser.add_argument("--stalls", type=int, default=100)
    parser.add_argument("--rates", default="1,2,4,10,20,50", help="req/s, comma-separated")
    parser.add_argument("--call-ms", type=float, default=5.0)
    args = parser.parse_args()
    rates = [2.0, 4.0, 10.0] if args.quick else [float(r) for r in args.rates.split(",")]
    stalls = 30 if args.quick else args.stalls
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # one warning per mark-down
    outcomes = []
    print(f"stalls marked down within 15 s, of {stalls} per row ({args.call_ms:g}-ms calls, Poisson arrivals)")
    print(f"{'req/s':>6}  {'keeps its replicas':>22}  {'min_replicas 0':>22}")
    for rate_hz in rates:
        row = [measure(rate_hz, stz, stalls, args.call_ms / 1000) for stz in (False, True)]
        outcomes += row
        cells = [f"{o.marked_down:>3}/{o.stalls} ({o.marked_down / o.stalls:4.0%}), "
                 f"{'-' if o.median_s is None else f'{o.median_s:.1f} s':>5}" for o in row]
        print(f"{rate_hz:>6g}  {cells[0]:>22}  {cells[1]:>22}", flush=True)
    print(json.dumps([o.__dict__ for o in outcomes]))


if __name__ == "__main__":
    main()
