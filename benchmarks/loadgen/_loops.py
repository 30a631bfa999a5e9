"""The two measuring loops, whatever carries the requests (HTTP or a DeploymentHandle).

A *sender* is ``async send(n) -> None | str``: it makes request number ``n`` and returns
None for a good answer or a short label of what went wrong (``"500"``, ``"ClientOSError"``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Sender = Callable[[int], Awaitable[str | None]]


async def closed_loop(send: Sender, concurrency: int, duration_s: float,
                      warmup_s: float) -> dict[str, Any]:
    """``concurrency`` callers, each sending its next request once the last one is answered.

    Requests that finish inside the ``duration_s`` after ``warmup_s`` are counted; caller
    ``i`` sends numbers ``i, i + concurrency, ...``.
    """
    latencies_ms: list[float] = []
    completed = 0
    errors: dict[str, int] = {}
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + duration_s

    async def caller(index: int) -> None:
        nonlocal completed
        n = index
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            error = await send(n)
            n += concurrency
            done = time.perf_counter()
            if measure_from <= done < stop_at:
                if error is None:
                    completed += 1
                    # A latency counts only if the request also started in the window,
                    # so the warm-up's connection set-up never leaks into it.
                    if sent >= measure_from:
                        latencies_ms.append((done - sent) * 1e3)
                else:
                    errors[error] = errors.get(error, 0) + 1

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return {"completed": completed, "throughput_rps": completed / duration_s,
            "latencies_ms": latencies_ms, "errors": errors}


async def alternating(senders: dict[str, Sender], duration_s: float,
                      warmup_s: float) -> dict[str, dict[str, Any]]:
    """One request at a time, to each target in turn (the start rotating); results by target.

    Every target sees the same conditions, request by request, so the difference of two
    latencies is not drowned by other work on the machine. A target's throughput is its
    completed requests over the time its own requests took (closed loop, concurrency 1).
    """
    names = list(senders)
    per_target: dict[str, dict[str, Any]] = {
        name: {"completed": 0, "busy_s": 0.0, "latencies_ms": [], "errors": {}} for name in names}
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + duration_s
    n = 0
    while time.perf_counter() < stop_at:
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            sent = time.perf_counter()
            error = await senders[name](n)
            done = time.perf_counter()
            if sent >= measure_from:
                stats = per_target[name]
                if error is None:
                    stats["completed"] += 1
                    stats["busy_s"] += done - sent
                    stats["latencies_ms"].append((done - sent) * 1e3)
                else:
                    stats["errors"][error] = stats["errors"].get(error, 0) + 1
        n += 1
    for stats in per_target.values():
        stats["throughput_rps"] = stats["completed"] / stats["busy_s"] if stats["busy_s"] else 0.0
    return per_target


# -- DeploymentHandle calls, from the process that holds the handles ---------------------


def _handle_sender(call: Callable[[int], Any]) -> Sender:
    async def send(n: int) -> str | None:
        try:
            await call(n)
        except Exception as err:  # noqa: BLE001 - counted and reported, never hidden
            return type(err).__name__
        return None

    return send


async def handle_closed_loop(call: Callable[[int], Any], concurrency: int, duration_s: float,
                             warmup_s: float) -> dict[str, Any]:
    """:func:`closed_loop` over ``call(n)``, e.g. ``lambda n: handle.predict.remote(x[n])``."""
    return await closed_loop(_handle_sender(call), concurrency, duration_s, warmup_s)


async def handle_alternating(calls: dict[str, Callable[[int], Any]], duration_s: float,
                             warmup_s: float) -> dict[str, dict[str, Any]]:
    """:func:`alternating` over handle calls, by name."""
    return await alternating({name: _handle_sender(call) for name, call in calls.items()},
                             duration_s, warmup_s)
