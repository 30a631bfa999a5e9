"""Fake HTTP servers on a real loopback socket, for tests of the HTTP clients (the CLI,
the PromQL provider) without a running app."""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class ServedInThread:
    """``handler`` served on a free 127.0.0.1 port by a background thread; ``close()`` stops it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BrokenAnswer:
    """A raw loopback server that reads each request whole (its first line kept in
    ``requests``), then, by ``mode``, resets the connection (``"reset"``: the answer lost, as
    when a proxy dies mid-call; http.server's own close would send a FIN first) or answers 200
    with a body that says it is gzip and is not (``"bad-gzip"``: a broken proxy)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.requests: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)
                while len(body) < length and (chunk := conn.recv(65536)):
                    body += chunk
                self.requests.append(lines[0])
                if self.mode == "reset":  # closed with SO_LINGER 0: an RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                                 b"Content-Length: 8\r\nConnection: close\r\n\r\nnot gzip")

    def close(self) -> None:
        self._server.close()


# What a serve-ab app with control.protect_reads answers a read without its token.
UNAUTHORIZED = (401, {"error": "reading this app's figures: a bearer token is needed, and it was missing or wrong "
                               "(Authorization: Bearer <token>)"})


class FakeApp(ServedInThread):
    """Records every request; answers ``responses[(method, path)]`` (status, JSON body or raw
    bytes, and optionally a dict of headers), else 404. With ``bearer`` set, a request without ``Authorization: Bearer <bearer>``
    gets :data:`UNAUTHORIZED` instead, as from an app with ``control.protect_reads``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.responses: dict[tuple[str, str], tuple] = {}
        self.bearer: str | None = None
        app = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                app.requests.append({
                    "method": self.command, "path": split.path, "query": parse_qs(split.query),
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(raw) if raw else None,
                })
                if app.bearer is not None and self.headers.get("Authorization") != f"Bearer {app.bearer}":
                    code, body, *extra = UNAUTHORIZED
                else:
                    code, body, *extra = app.responses.get((self.command, split.path), (404, {"detail": "Not Found"}))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for name, value in (extra[0] if extra else {}).items():  # (status, body, {header: value})
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *args):  # keep pytest output clean
                pass

        super().__init__(Handler)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]
