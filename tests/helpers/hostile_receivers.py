"""Webhook receivers on 127.0.0.1 that attack the sender: a gzip bomb (a 1 MB answer that
inflates to 1 GiB) and a drip (an answer's headers, then one body byte every ``drip_s``,
never finishing). Each counts the requests it got by path; the drip also how many of its
answers are still open."""

from __future__ import annotations

import functools
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MIB = 1 << 20


@functools.cache
def gzip_bomb(inflated_mib: int = 1024) -> bytes:
    """A valid gzip stream of ``inflated_mib`` MiB of zeros, about 1 KB per MiB: one MiB
    compressed, its fully flushed (byte-aligned, self-contained) block repeated."""
    zeros = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    last = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    return (first + block * (inflated_mib - 1) + last
            + struct.pack("<II", crc, (inflated_mib * MIB) & 0xFFFFFFFF))


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender that hung up mid-answer: what these receivers expect


class HostileReceiver:
    """``/bomb...``: 200 with the gzip bomb (Content-Encoding: gzip); ``/drip...``: 200 with
    a 1 MB Content-Length, then a byte every ``drip_s`` until the sender hangs up; any other
    path: 204 at once. After ``drips_first`` drips a drip path answers 410 (no more)."""

    def __init__(self, drip_s: float = 0.3, drips_first: int = 1_000_000):
        self.bomb = gzip_bomb()
        self.drip_s = drip_s
        self.drips_left = drips_first
        self.got: dict[str, int] = {}
        self.dripping = 0  # drip answers still open
        self.closing = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.got[self.path] = receiver.got.get(self.path, 0) + 1
                if self.path.startswith("/bomb"):
                    self._answer(200, receiver.bomb, {"content-encoding": "gzip"})
                elif self.path.startswith("/drip"):
                    self._drip()
                else:
                    self._answer(204, b"")

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None
                        ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the sender read what it wanted and hung up
                    self.close_connection = True

            def _drip(self) -> None:
                with receiver._lock:
                    receiver.drips_left -= 1
                    if receiver.drips_left < 0:
                        return self._answer(410, b"")
                    receiver.dripping += 1
                try:
                    self.send_response(200)
                    self.send_header("content-length", str(MIB))
                    self.end_headers()
                    self.wfile.flush()
                    while not receiver.closing.wait(receiver.drip_s):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                except OSError:
                    pass
                finally:
                    self.close_connection = True
                    with receiver._lock:
                        receiver.dripping -= 1

            def log_message(self, *_: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        with self._lock:
            return self.got.get(path, 0)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def peak_rss_reset() -> None:
    """Start measuring this process's peak resident memory afresh (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last reset, in MiB (Linux)."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
