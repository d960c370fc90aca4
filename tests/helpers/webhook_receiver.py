"""A webhook receiver on 127.0.0.1 for the tests: it verifies every request's Standard
Webhooks signature with the ``standardwebhooks`` package, keeps what it got, and answers each
path from a script (status codes in turn, then 204), once the path's hold (if any) is let go."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None  # parsed when the signature verified, else None
    verified: bool
    raw: bytes = b""  # as sent: to verify with another secret
    at: float = field(default_factory=time.monotonic)


class WebhookReceiver:
    def __init__(self, secret: str):
        self.verifier = Webhook(secret)
        self.received: list[Received] = []
        # path -> [(status, headers)] answered in turn; then 204.
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        # path -> an event each request there waits for (got, but not answered, until set)
        self.holds: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    body, verified = receiver.verifier.verify(raw, headers), True
                except WebhookVerificationError:
                    body, verified = None, False
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, verified, raw))
                    answers = receiver.script.get(self.path) or []
                    status, extra = answers.pop(0) if answers else (204, {})
                    hold = receiver.holds.get(self.path)
                if hold is not None:
                    hold.wait(10)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def events(self, path: str) -> list[str]:
        return [r.body["type"] for r in self.at(path) if r.body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
