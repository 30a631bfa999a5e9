"""A closed-loop HTTP load generator, meant to run in a process of its own.

N connections each send a request, wait for the answer and send the next one, for a fixed
time; requests that finish inside the measured window are counted. aiohttp (a Ray Serve
dependency) on uvloop when present: on a small machine the client shares the cores with
the server, so a cheap client leaves more of them to what is measured.

Two ways to use it:

    # one run, printed as JSON
    python benchmarks/loadgen.py --url http://127.0.0.1:PORT/plain --concurrency 8 --duration 5

    # a server for bench_serving.py: one JSON command per stdin line, one JSON result
    # per stdout line. {"url", "bodies", "concurrency", "duration_s", "warmup_s"} runs
    # the closed loop; {"urls", "bodies", "duration_s", "warmup_s"} alternates requests
    # between the URLs over one connection (see alternating()).
    python benchmarks/loadgen.py --serve
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

try:
    import uvloop
except ImportError:  # pragma: no cover - plain asyncio works, just costs more CPU
    uvloop = None

DEFAULT_BODY = json.dumps({"inputs": [[float(i % 16) for i in range(64)]], "user_id": "u-1"})


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, duration_s: float,
                      warmup_s: float) -> dict[str, Any]:
    """Run the loop; latencies (ms) and the count cover only ``duration_s`` after warm-up."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json"}
    latencies_ms: list[float] = []
    completed = 0
    errors: dict[str, int] = {}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def connection(index: int) -> None:
            nonlocal completed
            n = index
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                body = bodies[n % len(bodies)]
                n += concurrency
                try:
                    async with session.post(url, data=body) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as err:
                    status = type(err).__name__
                done = time.perf_counter()
                if measure_from <= done < stop_at:
                    if status == 200:
                        completed += 1
                        # A latency counts only if the request also started in the window,
                        # so the warm-up's connection set-up never leaks into it.
                        if sent >= measure_from:
                            latencies_ms.append((done - sent) * 1e3)
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1

        await asyncio.gather(*(connection(i) for i in range(concurrency)))
    return {
        "completed": completed,
        "throughput_rps": completed / duration_s,
        "latencies_ms": [round(x, 4) for x in latencies_ms],
        "errors": errors,
    }


async def alternating(urls: list[str], bodies: list[bytes], duration_s: float,
                      warmup_s: float) -> dict[str, Any]:
    """One connection, one request at a time, to each URL in turn (start rotating).

    Every URL sees the same conditions, request by request, so the difference of two
    latencies is not drowned by other work on the machine. A URL's throughput is its
    completed requests over the time its own requests took (closed loop, concurrency 1).
    """
    connector = aiohttp.TCPConnector(limit=1)
    headers = {"content-type": "application/json"}
    per_url = {url: {"completed": 0, "busy_s": 0.0, "latencies_ms": [], "errors": {}} for url in urls}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        measure_from = time.perf_counter() + warmup_s
        stop_at = measure_from + duration_s
        n = 0
        while time.perf_counter() < stop_at:
            shift = n % len(urls)
            for url in urls[shift:] + urls[:shift]:
                body = bodies[n % len(bodies)]
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as err:
                    status = type(err).__name__
                done = time.perf_counter()
                if sent >= measure_from:
                    stats = per_url[url]
                    if status == 200:
                        stats["completed"] += 1
                        stats["busy_s"] += done - sent
                        stats["latencies_ms"].append(round((done - sent) * 1e3, 4))
                    else:
                        stats["errors"][str(status)] = stats["errors"].get(str(status), 0) + 1
            n += 1
    for stats in per_url.values():
        stats["throughput_rps"] = stats["completed"] / stats["busy_s"] if stats["busy_s"] else 0.0
    return {"per_url": per_url}


def _run(coro: Any) -> Any:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def serve_commands() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        bodies = [b.encode() for b in command["bodies"]]
        warmup_s = command.get("warmup_s", 0.25)
        if "urls" in command:
            result = _run(alternating(command["urls"], bodies, command["duration_s"], warmup_s))
        else:
            result = _run(closed_loop(command["url"], bodies, command["concurrency"],
                                      command["duration_s"], warmup_s))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop HTTP load generator.")
    parser.add_argument("--serve", action="store_true", help="take JSON commands on stdin")
    parser.add_argument("--url", help="POST target, e.g. http://127.0.0.1:8123/plain")
    parser.add_argument("--body", default=DEFAULT_BODY, help="JSON body sent every time")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    args = parser.parse_args(argv)
    if args.serve:
        serve_commands()
        return 0
    if not args.url:
        parser.error("--url is required unless --serve is given")
    result = _run(closed_loop(args.url, [args.body.encode()], args.concurrency,
                              args.duration, args.warmup))
    latencies = sorted(result.pop("latencies_ms"))
    if latencies:
        result["p50_ms"] = latencies[len(latencies) // 2]
        result["p99_ms"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
