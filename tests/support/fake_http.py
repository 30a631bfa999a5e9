"""Fake HTTP servers on a real loopback socket, for tests of the HTTP clients (the CLI,
the PromQL provider) without a running app."""

from __future__ import annotations

import json
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
