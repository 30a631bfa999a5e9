"""HTTP load from a process of its own, driven over stdin/stdout by :class:`HttpLoad`.

aiohttp (a Ray Serve dependency) on uvloop when present: on a small machine the client
shares the cores with the server, so a cheap client leaves more of them to what is
measured. The process takes one JSON command per stdin line and answers one JSON line:

- ``{"url", "bodies", "concurrency", "duration_s", "warmup_s"}``: a closed loop
  (:func:`http_closed_loop`), answered with its summary;
- ``{"urls", "bodies", "duration_s", "warmup_s"}``: requests alternating between the URLs
  over one connection (:func:`http_alternating`), answered ``{"per_url": ...}``;
- ``{"record": {"url", "bodies", "concurrency", "out"}}``: a closed loop that keeps every
  request (:func:`http_recording`) until the next line; answered ``{"answering": true}``
  once a version answered (or ``{"error": ...}``), then ``{"done": true}`` once the
  records are written to ``out``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.loadgen._loops import Sender, alternating, closed_loop

try:
    import uvloop
except ImportError:  # pragma: no cover - plain asyncio works, just costs more CPU
    uvloop = None

REPO = Path(__file__).resolve().parents[2]
JSON_HEADERS = {"content-type": "application/json"}
#: (request id, t_send, t_done, version or error), times from time.monotonic().
Record = tuple[str, float, float, str]


def _poster(session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> Sender:
    async def send(n: int) -> str | None:
        try:
            async with session.post(url, data=bodies[n % len(bodies)]) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError as err:
            return type(err).__name__
        return None if status == 200 else str(status)

    return send


def _rounded(latencies_ms: list[float]) -> list[float]:
    return [round(x, 4) for x in latencies_ms]  # a tenth of a microsecond, for the JSON line


async def http_closed_loop(url: str, bodies: list[bytes], concurrency: int, duration_s: float,
                           warmup_s: float) -> dict[str, Any]:
    """:func:`closed_loop` over ``concurrency`` keep-alive connections to ``url``."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=JSON_HEADERS) as session:
        result = await closed_loop(_poster(session, url, bodies), concurrency, duration_s, warmup_s)
    result["latencies_ms"] = _rounded(result["latencies_ms"])
    return result


async def http_alternating(urls: list[str], bodies: list[bytes], duration_s: float,
                           warmup_s: float) -> dict[str, Any]:
    """:func:`alternating` between ``urls`` over one connection."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, headers=JSON_HEADERS) as session:
        per_url = await alternating({url: _poster(session, url, bodies) for url in urls},
                                    duration_s, warmup_s)
    for stats in per_url.values():
        stats["latencies_ms"] = _rounded(stats["latencies_ms"])
    return {"per_url": per_url}


async def http_recording(url: str, bodies: list[bytes], concurrency: int, stop: asyncio.Event,
                         answered: asyncio.Event, request_id_prefix: str) -> list[Record]:
    """A closed loop on ``concurrency`` keep-alive connections until ``stop``, keeping one
    :data:`Record` per request; ``answered`` is set once an answer names a version.

    Each request carries ``x-request-id: <prefix>-<connection>-<n>``, so that it can be
    found in the replica logs; a failing server is retried after 10 ms, never in a busy loop.
    """
    records: list[Record] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=JSON_HEADERS) as session:

        async def connection(index: int) -> None:
            n = 0
            while not stop.is_set():
                request_id = f"{request_id_prefix}-{index}-{n}"
                body = bodies[(index + n * concurrency) % len(bodies)]
                n += 1
                t_send = time.monotonic()
                try:
                    async with session.post(url, data=body, headers={"x-request-id": request_id}) as response:
                        await response.read()
                        version = response.headers.get("x-model-version") if response.status == 200 else None
                        outcome = version or ("no version header" if response.status == 200
                                              else f"http {response.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    outcome, version = type(err).__name__, None
                t_done = time.monotonic()
                records.append((request_id, t_send, t_done, outcome))
                if version is not None:
                    answered.set()
                else:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(connection(i) for i in range(concurrency)))
    return records


async def _record_until_stopped(command: dict[str, Any]) -> None:
    stop, answered = asyncio.Event(), asyncio.Event()
    bodies = [b.encode() for b in command["bodies"]]
    task = asyncio.create_task(http_recording(command["url"], bodies, command["concurrency"], stop,
                                              answered, command.get("request_id_prefix", "lg")))
    try:
        await asyncio.wait_for(answered.wait(), command.get("answer_within_s", 60))
        _reply({"answering": True})
    except asyncio.TimeoutError:
        _reply({"error": f"no answer in {command.get('answer_within_s', 60)} s"})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    records = await task
    Path(command["out"]).write_text(json.dumps(records))
    _reply({"done": True})


def run_async(coro: Any) -> Any:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def _reply(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def serve_commands() -> None:
    """The process's side of :class:`HttpLoad`: commands on stdin until it closes."""
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        command = json.loads(line)
        if "record" in command:
            run_async(_record_until_stopped(command["record"]))
            continue
        bodies = [b.encode() for b in command["bodies"]]
        warmup_s = command.get("warmup_s", 0.25)
        if "urls" in command:
            result = run_async(http_alternating(command["urls"], bodies, command["duration_s"], warmup_s))
        else:
            result = run_async(http_closed_loop(command["url"], bodies, command["concurrency"],
                                           command["duration_s"], warmup_s))
        _reply(result)


class HttpLoad:
    """The load generator process (``python -m benchmarks.loadgen serve``), one JSON line per run."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen", "serve"], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self._records_path: Path | None = None

    def run(self, url: str, bodies: list[str], concurrency: int, duration_s: float,
            warmup_s: float) -> dict[str, Any]:
        """A closed loop: completed, throughput_rps, latencies_ms (measured only), errors."""
        return self._call({"url": url, "bodies": bodies, "concurrency": concurrency,
                           "duration_s": duration_s, "warmup_s": warmup_s})

    def alternate(self, urls: list[str], bodies: list[str], duration_s: float,
                  warmup_s: float) -> dict[str, dict[str, Any]]:
        """Concurrency 1, the URLs taking turns request by request; results by URL."""
        return self._call({"urls": urls, "bodies": bodies, "duration_s": duration_s,
                           "warmup_s": warmup_s})["per_url"]

    def start_recording(self, url: str, bodies: list[str], concurrency: int, out: Path,
                        request_id_prefix: str) -> None:
        """Start a closed loop that keeps every request; returns once a version answered."""
        self._records_path = out
        answer = self._call({"record": {"url": url, "bodies": bodies, "concurrency": concurrency,
                                        "out": str(out), "request_id_prefix": request_id_prefix}})
        if not answer.get("answering"):
            raise RuntimeError(f"the load process did not get answers: {answer.get('error')}")

    def stop_recording(self) -> list[Record]:
        """Stop the recording loop; every request's :data:`Record`, in completion order."""
        if self._records_path is None:
            raise RuntimeError("stop_recording() without start_recording(): nothing is recording")
        answer = self._call({"stop": True})
        if not answer.get("done"):
            raise RuntimeError(f"the load process ended without its records: {answer}")
        records = [tuple(r) for r in json.loads(self._records_path.read_text())]
        self._records_path = None
        return records  # type: ignore[return-value]

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited (code {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        # Closing stdin also ends a recording loop: its readline() returns at end of file.
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
