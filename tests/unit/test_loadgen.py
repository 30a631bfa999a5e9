"""The load generator, run as a real subprocess against a fake server in this process.

The fake answers ``v1`` for even user keys and ``v2`` for odd ones, and can be switched to
answer 500, to drop connections, or to serve ``v2`` only. Time is never asserted beyond
"some requests were made"; checks on timestamps rest on causality (a request sent after
the switch was answered after it), so they hold on a slow machine too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from benchmarks.loadgen import HttpLoad
from tests.support import loadgen
from tests.support.loadgen import (
    LoadGenerator,
    LoadRecord,
    LoadSummary,
    first_time_served_by,
    is_ok,
    last_time_served_by,
    read_records,
    versions_between,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    mode = "parity"  # parity | fail | drop | v2


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real proxy does
    server: FakeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = self.server.mode
        if mode == "drop":
            self.close_connection = True  # no response at all: the client sees a disconnect
            return
        if mode == "fail":
            self._reply(500, {"error": "boom"}, version=None)
            return
        k = int(body["user_id"].removeprefix("user-"))
        version = "v2" if mode == "v2" or k % 2 else "v1"
        self._reply(200, {"version": version, "outputs": [[0.0]]}, version=version)

    def _reply(self, status: int, payload: dict, version: str | None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if version is not None:
            self.send_header("x-model-version", version)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def base_url(server: FakeServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/digits"


def failed(records: list[LoadRecord]) -> list[LoadRecord]:
    return [r for r in records if not is_ok(r)]


def test_a_run_through_failures_and_a_switch_of_version(server, tmp_path):
    out = tmp_path / "load.jsonl"
    with LoadGenerator(base_url(server), out, concurrency=3, users=10) as load:
        # Partial reads while it runs.
        running = load.wait_until(lambda rs: len(rs) >= 10)
        assert load.running
        assert all(is_ok(r) for r in running)

        server.mode = "fail"
        load.wait_until(lambda rs: any(r["status"] == 500 for r in rs))
        server.mode = "drop"
        load.wait_until(lambda rs: any(r["status"] is None for r in rs))
        server.mode = "parity"
        seen = len(load.records())
        load.wait_until(lambda rs: {"v1", "v2"} <= {r["version"] for r in rs[seen:] if is_ok(r)})

        server.mode = "v2"
        switched_at = time.time()  # any request sent from now on is answered by "v2"
        load.wait_until(lambda rs: sum(r["t_send"] >= switched_at for r in rs) >= 5)
    summary = load.summary
    assert summary is not None and not load.running
    records = read_records(out)

    assert summary.total == len(records) == summary.ok + summary.failed
    assert summary.ok > 0 and summary.failed > 0
    assert summary == LoadSummary.from_records(records)
    assert summary.duration_s > 0 and summary.throughput_rps > 0
    assert summary.by_version == Counter(r["version"] for r in records if is_ok(r))
    assert set(summary.by_version) == {"v1", "v2"}

    http_500 = [r for r in records if r["status"] == 500]
    dropped = [r for r in records if r["status"] is None]
    assert http_500 and all(r["error"].startswith("HTTP 500") for r in http_500)
    assert dropped and all(r["error"] for r in dropped)
    assert len(http_500) + len(dropped) == summary.failed
    assert any(text.startswith("HTTP 500") for text in summary.failures)

    for r in records:
        assert r["t_send"] <= r["t_done"]
        assert r["user"] in {f"user-{k}" for k in range(10)}
        if is_ok(r):
            assert r["error"] is None
            # Odd users always get v2; even ones get v1 until the switch.
            assert r["version"] == "v2" or int(r["user"].removeprefix("user-")) % 2 == 0, r

    # The v1 answers all came from requests sent before the switch; none after it.
    v1_records = [r for r in records if is_ok(r) and r["version"] == "v1"]
    assert last_time_served_by(records, "v1") == max(r["t_done"] for r in v1_records)
    assert all(r["t_send"] < switched_at for r in v1_records)
    after = versions_between(records, switched_at, float("inf"))
    assert after["v2"] >= 5 and after["v1"] == 0
    assert first_time_served_by(records, "v2") == min(
        r["t_done"] for r in records if is_ok(r) and r["version"] == "v2"
    )
    assert last_time_served_by(records, "v3") is None


def loadgen_command(url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.loadgen", "--url", url, "--out", str(out),
            "--concurrency", "2", *extra]


def test_exits_cleanly_on_sigterm(tmp_path, server):
    out = tmp_path / "load.jsonl"
    process = subprocess.Popen(
        loadgen_command(base_url(server), out), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not (out.exists() and read_records(out)) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["total"] == len(read_records(out)) > 0
    assert out.read_text().endswith("\n")  # every record written whole


def test_exits_after_its_duration_and_counts_an_unreachable_server_as_failures(tmp_path):
    out = tmp_path / "load.jsonl"
    with socket_closed_port() as port:
        done = subprocess.run(
            loadgen_command(f"http://127.0.0.1:{port}", out, "--duration-s", "0.5"),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=15, check=False,
        )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    records = read_records(out)
    assert summary["total"] == len(records) > 0
    assert summary["ok"] == 0 and summary["failed"] == summary["total"]
    assert summary["by_version"] == {}
    assert all(r["status"] is None and r["error"].startswith("ConnectError") for r in records)


def test_refuses_a_stale_stop_file(tmp_path, capsys):
    stop = tmp_path / "stop"
    stop.touch()
    with pytest.raises(SystemExit) as exit_info:
        loadgen.main(["--url", "http://127.0.0.1:9", "--out", str(tmp_path / "x.jsonl"),
                      "--stop-file", str(stop)])
    assert exit_info.value.code == 2
    assert f"--stop-file {stop} already exists" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "127.0.0.1:8000"}, "must start with http://"),
        ({"concurrency": 0}, r"concurrency \(0\) must be at least 1"),
        ({"rate_per_worker_hz": 0.0}, r"rate_per_worker_hz \(0.0\) must be a positive number"),
        ({"users": 0}, r"users \(0\) must be at least 1"),
        ({"duration_s": -1.0}, r"duration_s \(-1.0\) must be a positive number"),
    ],
)
def test_rejects_bad_settings_with_the_value_received(tmp_path, kwargs, message):
    settings = {"url": "http://127.0.0.1:8000", "out_path": tmp_path / "x.jsonl", **kwargs}
    with pytest.raises(ValueError, match=message):
        LoadGenerator(**settings)


# -- the pure helpers, on hand-written records -------------------------------------------------


def rec(t_send: float, t_done: float, status: int | None, version: str | None, error: str | None = None) -> LoadRecord:
    return LoadRecord(t_send=t_send, t_done=t_done, status=status, version=version, user="user-0", error=error)


def test_summary_and_time_helpers_on_known_records():
    records = [
        rec(0.0, 0.5, 200, "v1"),
        rec(1.0, 1.5, 200, "v2"),
        rec(2.0, 2.5, 500, "v2", "HTTP 500: boom"),
        rec(2.0, 2.5, 500, "v2", "HTTP 500: boom"),
        rec(3.0, 3.5, None, None, "ReadTimeout"),
        rec(3.0, 4.0, 200, "v1"),
        rec(4.0, 4.5, 204, None),
    ]
    summary = LoadSummary.from_records(records)
    assert (summary.total, summary.ok, summary.failed) == (7, 4, 3)
    assert summary.failures == ("HTTP 500: boom", "ReadTimeout")
    assert summary.by_version == {"v1": 2, "v2": 1}
    assert summary.duration_s == 4.5
    assert summary.throughput_rps == pytest.approx(7 / 4.5)

    assert last_time_served_by(records, "v1") == 4.0
    assert first_time_served_by(records, "v1") == 0.5
    assert last_time_served_by(records, "v2") == 1.5  # the failed v2 answers do not count
    # Only requests wholly inside the window: the one sent at 3.0 ends at 4.0 > 3.9.
    assert versions_between(records, 0.5, 3.9) == Counter({"v2": 1})
    assert versions_between(records, 0.0, 10.0) == Counter({"v1": 2, "v2": 1, None: 1})

    empty = LoadSummary.from_records([])
    assert (empty.total, empty.duration_s, empty.throughput_rps) == (0, 0.0, 0.0)


def test_read_records_skips_a_line_still_being_written_and_rejects_foreign_lines(tmp_path):
    path = tmp_path / "load.jsonl"
    whole = json.dumps(rec(0.0, 1.0, 200, "v1"))
    path.write_text(whole + "\n" + whole[:10])
    assert read_records(path) == [rec(0.0, 1.0, 200, "v1")]

    path.write_text(whole + "\nnot json\n")
    with pytest.raises(ValueError, match=r"load.jsonl:2 is not a load record"):
        read_records(path)
    path.write_text('{"status": 200}\n')
    with pytest.raises(ValueError, match=r"expected an object with t_send"):
        read_records(path)


def test_version_comes_from_the_body_else_the_header():
    header = {"x-model-version": "v2"}
    assert loadgen._version_of(httpx.Response(200, json={"version": "v1"}, headers=header)) == "v1"
    assert loadgen._version_of(httpx.Response(502, text="<html>bad gateway</html>", headers=header)) == "v2"
    assert loadgen._version_of(httpx.Response(500, json={"error": "boom"})) is None


def test_the_benchmarks_load_process_runs_alternates_and_records(server, tmp_path):
    url = base_url(server) + "/predict"
    bodies = [json.dumps({"user_id": f"user-{k}", "inputs": [[0.0]]}) for k in range(4)]
    load = HttpLoad()
    try:
        run = load.run(url, bodies, concurrency=2, duration_s=0.3, warmup_s=0.1)
        assert run["completed"] > 0 and run["errors"] == {}
        assert 0 < len(run["latencies_ms"]) <= run["completed"]

        other = url + "?other"
        per_url = load.alternate([url, other], bodies, duration_s=0.3, warmup_s=0.05)
        assert set(per_url) == {url, other}
        # Turn by turn: neither URL can be more than one request ahead of the other.
        assert abs(per_url[url]["completed"] - per_url[other]["completed"]) <= 1
        assert all(stats["throughput_rps"] > 0 for stats in per_url.values())

        server.mode = "fail"
        failing = load.run(url, bodies, concurrency=1, duration_s=0.2, warmup_s=0.0)
        assert failing["completed"] == 0 and failing["errors"].get("500", 0) > 0
        server.mode = "parity"

        load.start_recording(url, bodies, 2, tmp_path / "records.json", request_id_prefix="t")
        time.sleep(0.1)
        records = load.stop_recording()
    finally:
        load.close()
    assert load.proc.returncode == 0
    assert records and all(t_send <= t_done for _, t_send, t_done, _ in records)
    assert {outcome for *_, outcome in records} == {"v1", "v2"}
    assert len({request_id for request_id, *_ in records}) == len(records)
    assert all(request_id.startswith("t-") for request_id, *_ in records)


def test_public_names():
    assert set(loadgen.__all__) <= set(dir(loadgen))


class socket_closed_port:
    """A port that nothing listens on: bound to reserve it, never listening."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return self._sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_a_user_sends_a_different_sample_on_each_visit(tmp_path):
    """One fixed sample per user made each user always right or always wrong: feedback a gate
    rightly reads as one unit per user (the demo's canary held until its deadline)."""
    from benchmarks.loadgen._records import _Run

    run = _Run("http://127.0.0.1:9", sink=None, concurrency=1, rate_per_worker_hz=1.0, users=3)
    assert [run._user() for _ in range(7)] == [("user-0", 0), ("user-1", 1), ("user-2", 2), ("user-0", 1),
                                               ("user-1", 2), ("user-2", 3), ("user-0", 2)]
