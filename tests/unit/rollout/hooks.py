"""A webhook endpoint on a real loopback socket, for notifications, webhook gates and confirm
steps: it records every POST and answers from a script."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.support.fake_http import ServedInThread


class HookServer(ServedInThread):
    """Records ``(path, headers, body)`` of every POST; answers ``script[path]`` in turn (each
    ``(status, body, delay_s)``; the last one repeats), else 200 ``{}``."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.script: dict[str, list[tuple[int, object, float]]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.received.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(raw) if raw else None})
                    answers = fake.script.get(self.path.split("?")[0]) or [(200, {}, 0.0)]
                    status, body, delay_s = answers.pop(0) if len(answers) > 1 else answers[0]
                time.sleep(delay_s)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def answer(self, path: str, *answers: tuple) -> None:
        """Answer ``path`` with these, in turn: (status, body) or (status, body, delay_s)."""
        with self.lock:
            self.script[path] = [(a[0], a[1], a[2] if len(a) > 2 else 0.0) for a in answers]

    def bodies(self, path: str) -> list:
        with self.lock:
            return [r["body"] for r in self.received if r["path"].split("?")[0] == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 10.0) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.bodies(path)) < count:
            assert time.monotonic() < deadline, f"{path} got {len(self.bodies(path))} of {count} requests"
            time.sleep(0.01)
        return self.bodies(path)


class TrickleServer(ServedInThread):
    """Answers every POST 200 with ``body``, its headers at once and then one byte every
    ``byte_every_s``: each read is quick, the whole answer is not (``len(body) * byte_every_s``)."""

    def __init__(self, body: bytes, byte_every_s: float = 0.1) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(byte_every_s)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler)
