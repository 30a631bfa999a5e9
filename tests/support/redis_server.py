"""A real Redis for the store tests: Debian's ``redis-server`` on a free port, never a mock.

Started with AOF on (as the README advises for production) and no RDB snapshots, in a
temporary directory. Without ``redis-server`` the tests that need it skip, or fail under
``CI=true`` (``scripts/test.sh`` installs it when it may).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

INSTALL = "sudo apt-get install -y redis-server (scripts/test.sh does this when run as root)"
START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"redis-server is not installed, and CI must run the Redis store tests: {INSTALL}")
        pytest.skip(f"redis-server is not installed: {INSTALL}")
    return path


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` and :meth:`start` again on the same port and data."""

    def __init__(self, binary: str, directory: Path):
        self.binary = binary
        self.directory = directory
        self.port = free_port()  # below the ephemeral range: Ray's processes take ports there
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--dir", str(self.directory), "--logfile", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not answer PING within {START_TIMEOUT_S:g}s: {self._log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return "(no log)"


@pytest.fixture
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A running Redis of its own for one test (starting one takes milliseconds)."""
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
