"""A slow-body flood on loopback, for the security test and bench/bench_load.py: ``count``
connections without an API key, each a multipart upload whose body comes one byte at a time.
A connection the service answers or closes is opened again after ``reopen_s``, so ``count``
stay attempted all along, as an attacker would keep them. One thread, one selector; bounded
by its ``stop()`` (or leaving its ``with``)."""

from __future__ import annotations

import resource
import selectors
import socket
import threading
import time
from collections import Counter
from types import TracebackType

BOUNDARY = "slowbodyboundary"
PREAMBLE = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n").encode()


def allow_sockets(count: int) -> None:
    """Raise this process's descriptor limit to fit ``count`` sockets and some."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class SlowBodies:
    def __init__(self, url: str, count: int = 400, byte_every_s: float = 1.0,
                 reopen_s: float = 5.0, path: str = "/api/upscale/esrgan",
                 declared_bytes: int = 1_000_000):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.count, self.byte_every_s, self.reopen_s = count, byte_every_s, reopen_s
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                     f"Content-Length: {declared_bytes}\r\n\r\n").encode() + PREAMBLE
        self.answers: Counter[str] = Counter()  # "401", "503", "closed", "refused", ...
        self.opened = 0
        self.open_now = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-bodies", daemon=True)
        allow_sockets(count)

    def __enter__(self) -> SlowBodies:
        self._thread.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
            sock.sendall(self.head)
        except OSError:
            self.answers["refused"] += 1
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        reopen_at: list[float] = [0.0] * self.count  # per slot: when to (re)open
        socks: list[socket.socket | None] = [None] * self.count
        next_byte = time.monotonic() + self.byte_every_s

        def close(i: int, why: str) -> None:
            sock = socks[i]
            assert sock is not None
            selector.unregister(sock)
            sock.close()
            socks[i] = None
            self.answers[why] += 1
            reopen_at[i] = time.monotonic() + self.reopen_s

        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for i in range(self.count):
                    if socks[i] is None and reopen_at[i] <= now:
                        socks[i] = self._connect()
                        if socks[i] is None:
                            reopen_at[i] = now + self.reopen_s
                        else:
                            selector.register(socks[i], selectors.EVENT_READ, i)
                self.open_now = sum(s is not None for s in socks)
                for key, _ in selector.select(timeout=0.1):
                    i = key.data
                    try:
                        data = socks[i].recv(4096)
                    except OSError:
                        data = b""
                    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") \
                        else "closed"
                    close(i, status)
                if time.monotonic() >= next_byte:
                    next_byte += self.byte_every_s
                    for i, sock in enumerate(socks):
                        if sock is None:
                            continue
                        try:
                            self.bytes_sent += sock.send(b"x")
                        except OSError:
                            close(i, "reset")
        finally:
            for sock in socks:
                if sock is not None:
                    sock.close()
            selector.close()
