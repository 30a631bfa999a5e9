"""Paced HTTP load that records every request, for tests that watch rollouts under load.

It runs in a process of its own, so the test process (and Ray's) stays free to drive the
rollout while the load flows. Each worker is a thread with its own ``httpx.Client`` that
POSTs ``{url}/predict`` for user keys ``user-0 .. user-{users-1}`` in turn, at most
``rate_per_worker_hz`` times a second, and appends one JSON line per request to the
output file as soon as it completes, so a test can read results while the load runs::

    from benchmarks.loadgen import LoadGenerator, last_time_served_by, read_records

    with LoadGenerator("http://127.0.0.1:8000/digits", tmp_path / "load.jsonl") as load:
        load.wait_until(lambda records: len(records) >= 20)
        ...                                    # start the canary, breach a gate, roll back
        rollback_at = time.time()
    summary = load.summary                     # set once the context exits
    assert summary.failed == 0, summary.failures
    records = read_records(tmp_path / "load.jsonl")
    propagation_s = last_time_served_by(records, "v2") - rollback_at

From a shell::

    python -m benchmarks.loadgen record --url http://127.0.0.1:8000/digits --concurrency 4 \\
        --out /tmp/load.jsonl [--duration-s 60] [--rate-per-worker-hz 50] [--users 1000] \\
        [--stop-file /tmp/load.stop]

The process stops on the stop file appearing, on SIGTERM or SIGINT, or after
``--duration-s``; it lets in-flight requests finish (each is bounded by
:data:`REQUEST_TIMEOUT_S`), then prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypedDict

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD_COMMAND = ("-m", "benchmarks.loadgen", "record")
VERSION_HEADER = "x-model-version"
# httpx applies it to each phase (connect, write, read, pool) of a request.
REQUEST_TIMEOUT_S = 10.0
DIGIT_ROW = [float(i % 16) for i in range(64)]
STARTUP_TIMEOUT_S = 60.0
_STOP_POLL_S = 0.05
_MAX_FAILURES_KEPT = 5
_MAX_ERROR_CHARS = 200


class LoadRecord(TypedDict):
    """One request, as one line of the output file.

    ``t_send`` and ``t_done`` are wall-clock ``time.time()`` values, so they compare with
    timestamps taken in the test process. ``status`` is None when no response came back
    (connection refused or dropped, timeout); ``error`` is None for a 2xx answer and a
    short text otherwise (``"HTTP 500: <body excerpt>"``, ``"ConnectError: ..."``).
    ``version`` is the body's ``"version"`` or else the ``x-model-version`` header.
    """

    t_send: float
    t_done: float
    status: int | None
    version: str | None
    user: str
    error: str | None


def is_ok(record: LoadRecord) -> bool:
    """A 2xx answer; anything else (non-2xx, no answer at all) is a failed request."""
    status = record["status"]
    return status is not None and 200 <= status < 300


@dataclass(frozen=True)
class LoadSummary:
    """Counts over a run's records.

    ``by_version`` counts OK answers only (a 2xx answer that named no version is in ``ok``
    but not in ``by_version``). ``failures`` holds the first few distinct failure texts.
    ``duration_s`` spans the first send to the last completion.
    """

    total: int
    ok: int
    failed: int
    failures: tuple[str, ...]
    by_version: Mapping[str, int]
    duration_s: float
    throughput_rps: float

    @classmethod
    def from_records(cls, records: Iterable[LoadRecord]) -> LoadSummary:
        records = list(records)
        ok = [r for r in records if is_ok(r)]
        failures: list[str] = []
        for record in records:
            if is_ok(record) or len(failures) >= _MAX_FAILURES_KEPT:
                continue
            text = record["error"] or f"HTTP {record['status']}"
            if text not in failures:
                failures.append(text)
        duration_s = (
            max(r["t_done"] for r in records) - min(r["t_send"] for r in records) if records else 0.0
        )
        return cls(
            total=len(records),
            ok=len(ok),
            failed=len(records) - len(ok),
            failures=tuple(failures),
            by_version=dict(Counter(r["version"] for r in ok if r["version"] is not None)),
            duration_s=duration_s,
            throughput_rps=len(records) / duration_s if duration_s > 0 else 0.0,
        )


def read_records(out_path: str | Path) -> list[LoadRecord]:
    """The records written so far, in completion order.

    Safe while the generator runs: a last line without its newline is still being written
    and is left out. A complete line that is not a record means the file is not ours, so
    it raises rather than skipping data.
    """
    path = Path(out_path)
    lines = path.read_text(encoding="utf-8").split("\n")
    records: list[LoadRecord] = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1] is "" or a partial line
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not a load record ({exc}): {line[:120]!r}") from exc
        if not isinstance(record, dict) or not {"t_send", "t_done", "status"} <= record.keys():
            raise ValueError(
                f"{path}:{number} is not a load record: expected an object with t_send, t_done, "
                f"status, version, user and error; got {line[:120]!r}"
            )
        records.append(record)  # type: ignore[arg-type]
    return records


def versions_between(records: Iterable[LoadRecord], t0: float, t1: float) -> Counter[str | None]:
    """Versions of the OK answers to requests that lay wholly inside ``[t0, t1]``.

    "Wholly inside" (sent at or after ``t0``, done by ``t1``) makes this the set to check
    against weights that held throughout the window: a request in flight across a weight
    change may legitimately show either side of it.
    """
    return Counter(
        r["version"] for r in records if is_ok(r) and r["t_send"] >= t0 and r["t_done"] <= t1
    )


def last_time_served_by(records: Iterable[LoadRecord], version: str) -> float | None:
    """The latest ``t_done`` of an OK answer from ``version``; None if it never answered."""
    times = [r["t_done"] for r in records if is_ok(r) and r["version"] == version]
    return max(times) if times else None


def first_time_served_by(records: Iterable[LoadRecord], version: str) -> float | None:
    """The earliest ``t_done`` of an OK answer from ``version``; None if it never answered."""
    times = [r["t_done"] for r in records if is_ok(r) and r["version"] == version]
    return min(times) if times else None


def _check_settings(
    url: str, concurrency: int, rate_per_worker_hz: float, users: int, duration_s: float | None
) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"url must start with http:// or https://; got {url!r}. "
            "Pass the app's route prefix, like 'http://127.0.0.1:8000/digits'."
        )
    if concurrency < 1:
        raise ValueError(f"concurrency ({concurrency}) must be at least 1, e.g. 4")
    if not (math.isfinite(rate_per_worker_hz) and rate_per_worker_hz > 0):
        raise ValueError(f"rate_per_worker_hz ({rate_per_worker_hz}) must be a positive number, e.g. 50")
    if users < 1:
        raise ValueError(f"users ({users}) must be at least 1, e.g. 1000")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s ({duration_s}) must be a positive number of seconds or None")


# -- the generator process ------------------------------------------------------------------


class _RecordSink:
    """One line per record, written whole under a lock and flushed at its newline."""

    def __init__(self, path: Path):
        self._file = path.open("w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, record: LoadRecord) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)

    def close(self) -> None:
        self._file.close()


def _short(text: str) -> str:
    return " ".join(text.split())[:_MAX_ERROR_CHARS]


def _version_of(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:  # not JSON (a proxy's error page, say): the header may still name it
        body = None
    if isinstance(body, dict) and isinstance(body.get("version"), str):
        return body["version"]
    return response.headers.get(VERSION_HEADER)


@dataclass(frozen=True)
class _Workload:
    """What to send: one fixed row, or labelled samples with feedback on correctness."""

    rows: tuple[tuple[float, ...], ...] = (tuple(DIGIT_ROW),)
    labels: tuple[int, ...] | None = None
    feedback_name: str | None = None

    @classmethod
    def from_args(cls, samples: Path | None, feedback_name: str | None) -> _Workload:
        if samples is None:
            return cls()
        data = json.loads(Path(samples).read_text())
        return cls(tuple(map(tuple, data["inputs"])), tuple(data["labels"]), feedback_name)


def _send(client: httpx.Client, predict_url: str, user: str, workload: _Workload = _Workload(),
          k: int = 0) -> LoadRecord:
    t_send = time.time()
    row = workload.rows[k % len(workload.rows)]
    try:
        response = client.post(predict_url, json={"user_id": user, "inputs": [row]})
    except httpx.HTTPError as exc:
        error = _short(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return LoadRecord(t_send=t_send, t_done=time.time(), status=None, version=None, user=user, error=error)
    t_done = time.time()
    error = None if response.is_success else _short(f"HTTP {response.status_code}: {response.text}")
    if response.is_success and workload.feedback_name and workload.labels is not None:
        # The business outcome a client would report: was the answer right?
        body = response.json()
        correct = max(range(len(body["outputs"][0])), key=body["outputs"][0].__getitem__) == \
            workload.labels[k % len(workload.labels)]
        try:
            client.post(predict_url.rsplit("/", 1)[0] + "/feedback", json={
                "request_id": body["request_id"], "feedback_token": body.get("feedback_token"),
                "name": workload.feedback_name, "converted": correct})
        except httpx.HTTPError:
            pass  # feedback is best effort, as from a real client
    return LoadRecord(
        t_send=t_send, t_done=t_done, status=response.status_code,
        version=_version_of(response), user=user, error=error,
    )


class _Run:
    """Worker threads sharing one stop event, one user counter and one sink."""

    def __init__(self, url: str, sink: _RecordSink, concurrency: int, rate_per_worker_hz: float, users: int,
                 workload: _Workload = _Workload()):
        self.workload = workload
        self.predict_url = url.rstrip("/") + "/predict"
        self.sink = sink
        self.period_s = 1.0 / rate_per_worker_hz
        self.users = users
        self.stop = threading.Event()
        self.crashes: list[BaseException] = []
        self._next_user = 0
        self._requests = 0
        self._user_lock = threading.Lock()
        # Built up front so the load starts at full concurrency; one TLS context for all of
        # them because building it is most of a client's cost. trust_env=False: a proxy from
        # the environment must not stand between the load and the server under test.
        tls = httpx.create_ssl_context()
        self.threads = [
            threading.Thread(
                target=self._worker,
                args=(httpx.Client(timeout=REQUEST_TIMEOUT_S, verify=tls, trust_env=False),),
                name=f"loadgen-{i}",
            )
            for i in range(concurrency)
        ]

    def _user(self) -> tuple[str, int]:
        """The next user key, and the index of the sample it sends. A user sends a different
        sample each visit, as a real one would: one fixed sample per user made every user
        always right or always wrong, and a gate on such feedback rightly counts each user
        as one unit of evidence (a demo canary at 5% of 500 users held until its deadline)."""
        with self._user_lock:
            k = self._next_user
            self._next_user = (k + 1) % self.users
            visit = self._requests // self.users
            self._requests += 1
        return f"user-{k}", k + visit  # the user's own sample, moved on by one each visit

    def _worker(self, client: httpx.Client) -> None:
        try:
            with client:
                next_send = time.monotonic()
                while not self.stop.wait(max(0.0, next_send - time.monotonic())):
                    # From whichever is later, so a slow answer delays the next send instead
                    # of being made up with a burst: the rate is a ceiling, never exceeded.
                    next_send = max(next_send, time.monotonic()) + self.period_s
                    user, k = self._user()
                    self.sink.write(_send(client, self.predict_url, user, self.workload, k))
        except BaseException as exc:  # a bug here must end the run loudly, not thin the load
            self.crashes.append(exc)
            self.stop.set()
            raise


def _parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Closed-loop load on {url}/predict, one JSON line per request in --out.",
    )
    parser.add_argument("--url", required=True, help="the app's base URL, e.g. http://127.0.0.1:8000/digits")
    parser.add_argument("--out", required=True, type=Path, help="JSONL file of records (truncated)")
    parser.add_argument("--concurrency", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument("--rate-per-worker-hz", type=float, default=50.0, help="ceiling per worker (default 50)")
    parser.add_argument("--users", type=int, default=1000, help="distinct user keys to cycle (default 1000)")
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this long (default: never)")
    parser.add_argument("--stop-file", type=Path, default=None, help="stop once this file exists")
    parser.add_argument("--samples", type=Path, default=None,
                        help="JSON {inputs, labels} to send instead of one fixed row")
    parser.add_argument("--feedback", default=None,
                        help="with --samples: POST /feedback NAME converted=<answer was right>")
    args = parser.parse_args(argv)
    try:
        _check_settings(args.url, args.concurrency, args.rate_per_worker_hz, args.users, args.duration_s)
    except ValueError as exc:
        parser.error(str(exc))
    if args.stop_file is not None and args.stop_file.exists():
        # Stale from an earlier run, it would stop this one before its first request.
        parser.error(f"--stop-file {args.stop_file} already exists; remove it or pass a fresh path")
    return args


def record_main(argv: list[str] | None = None, prog: str = "python -m benchmarks.loadgen record") -> int:
    """The generator process: ``python -m benchmarks.loadgen record --url ... --out ...``."""
    args = _parse_args(argv, prog)
    sink = _RecordSink(args.out)
    run = _Run(args.url, sink, args.concurrency, args.rate_per_worker_hz, args.users,
               _Workload.from_args(args.samples, args.feedback))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: run.stop.set())
    for thread in run.threads:
        thread.start()
    deadline = None if args.duration_s is None else time.monotonic() + args.duration_s
    while not run.stop.wait(_STOP_POLL_S):
        if (args.stop_file is not None and args.stop_file.exists()) or (
            deadline is not None and time.monotonic() >= deadline
        ):
            run.stop.set()
    for thread in run.threads:
        thread.join()
    sink.close()
    print(json.dumps(asdict(LoadSummary.from_records(read_records(args.out)))), flush=True)
    return 1 if run.crashes else 0


# -- the test-side handle -------------------------------------------------------------------


class LoadGenerator:
    """Runs ``python -m benchmarks.loadgen record`` in a subprocess and reads back its results."""

    def __init__(
        self,
        url: str,
        out_path: str | Path,
        concurrency: int = 4,
        rate_per_worker_hz: float = 50.0,
        users: int = 1000,
        duration_s: float | None = None,
        samples: str | Path | None = None,
        feedback: str | None = None,
    ):
        _check_settings(url, concurrency, rate_per_worker_hz, users, duration_s)
        self.samples = samples
        self.feedback = feedback
        self.url = url
        self.out_path = Path(out_path)
        self.concurrency = concurrency
        self.rate_per_worker_hz = rate_per_worker_hz
        self.users = users
        self.duration_s = duration_s
        self.summary: LoadSummary | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("this LoadGenerator was already started; make a new one for another run")
        # Created here, so that reads made before the process gets going find an empty file.
        self.out_path.write_text("", encoding="utf-8")
        self._workdir = Path(tempfile.mkdtemp(prefix="loadgen-"))
        command = [
            sys.executable, *RECORD_COMMAND,
            "--url", self.url,
            "--out", str(self.out_path.resolve()),
            "--concurrency", str(self.concurrency),
            "--rate-per-worker-hz", repr(self.rate_per_worker_hz),
            "--users", str(self.users),
            "--stop-file", str(self._stop_file),
        ]
        if self.duration_s is not None:
            command += ["--duration-s", repr(self.duration_s)]
        if self.samples is not None:
            command += ["--samples", str(self.samples)]
        if self.feedback is not None:
            command += ["--feedback", self.feedback]
        with self._log_file.open("wb") as log:
            self._process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        # Return once requests flow: on a busy machine the process takes seconds to start,
        # and a test that acts before then would not be testing anything under load.
        self.wait_until(lambda records: len(records) > 0, timeout_s=STARTUP_TIMEOUT_S)
        return self

    def records(self) -> list[LoadRecord]:
        """The records so far; fine to call while the load runs."""
        return read_records(self.out_path)

    def wait_until(
        self, condition: Callable[[list[LoadRecord]], bool], timeout_s: float = 10.0
    ) -> list[LoadRecord]:
        """Poll the records until ``condition(records)`` holds; returns those records."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.records()
            if condition(records):
                return records
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(
                    f"load generator is not running (exit code "
                    f"{None if self._process is None else self._process.returncode}) and the "
                    f"condition never held over {len(records)} records; its output:\n{self._output()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"condition not met within {timeout_s} s; "
                    f"{LoadSummary.from_records(records)}"
                )
            time.sleep(0.02)

    def stop(self, timeout_s: float = 30.0) -> LoadSummary:
        """Ask the process to stop, wait for in-flight requests, and summarize the run."""
        if self.summary is not None:
            return self.summary
        if self._process is None:
            raise RuntimeError("stop() before start(): nothing is running")
        self._stop_file.touch()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            output = self._output()
            self._kill()
            raise TimeoutError(
                f"load generator did not stop within {timeout_s} s of its stop file; killed it. "
                f"Its output:\n{output}"
            ) from None
        if self._process.returncode != 0:
            output = self._output()
            self._cleanup()
            raise RuntimeError(
                f"load generator exited with code {self._process.returncode}; its output:\n{output}"
            )
        self._cleanup()
        self.summary = LoadSummary.from_records(self.records())
        return self.summary

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.stop()
        elif self.summary is None:
            # The test already failed; stop quietly so the original error is the one shown.
            self._kill()

    @property
    def _stop_file(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "stop"

    @property
    def _log_file(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "output.log"

    def _output(self) -> str:
        try:
            return self._log_file.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError as exc:
            return f"(output unavailable: {exc})"

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

