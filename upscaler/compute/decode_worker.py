"""Check decodes in worker processes, each stopped at a time limit (a decode in a thread could
not be stopped, and a crashing decoder would take the replica down).
Design: docs/design/engines.md
"""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from typing import IO, Any

from upscaler.errors import InvalidImage, UpscalerError

# Request: max_pixels, length, then the bytes. Answer: length, then a pickled outcome (None,
# an UpscalerError, or a string naming an unexpected exception).
REQUEST = struct.Struct(">QQ")
ANSWER = struct.Struct(">Q")
READY = b"R"
# A worker imports numpy and Pillow before it says it is ready; not part of any decode's time.
START_TIMEOUT_S = 60.0


class _Timeout(Exception):
    pass


class _Gone(Exception):
    pass


class _Worker:
    def __init__(self) -> None:
        # The parent's import path (a Ray replica's may be its own), and nothing else.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "upscaler.compute.decode_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                     env=env, close_fds=True)
        self.ready = False

    def _read(self, n: int, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd, chunks, got = self.proc.stdout.fileno(), [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _Timeout
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise _Gone
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def check(self, data: bytes, max_pixels: int, timeout_s: float) -> Any:
        """The outcome of one check decode (blocking: run it in a thread)."""
        if not self.ready:
            try:
                self._read(len(READY), time.monotonic() + START_TIMEOUT_S)
            except _Timeout:
                raise _Gone from None
            self.ready = True
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(REQUEST.pack(max_pixels, len(data)))
            self.proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            raise _Gone from None
        deadline = time.monotonic() + timeout_s
        (size,) = ANSWER.unpack(self._read(ANSWER.size, deadline))
        return pickle.loads(self._read(size, deadline))

    def kill(self) -> None:
        # Not closing the pipes here: a thread may still be reading them (it sees the end).
        if self.proc.poll() is None:
            self.proc.kill()


class DecodeWorkers:
    """At most ``workers`` check decodes at once, each in a worker process, each within its
    time limit; more wait their turn. Workers start on first use and are reused."""

    def __init__(self, workers: int = 2) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()

    async def check(self, data: bytes, max_pixels: int, timeout_s: float) -> None:
        """Raise what the decode raised (InvalidImage, PayloadTooLarge, ...); 422
        ``decode_too_slow`` past the limit, 422 ``decode_failed`` if the decoder died."""
        async with self._slots:
            for attempt in (1, 2):  # an idle worker may have gone (killed): once more, fresh
                worker = self._idle.pop() if self._idle else self._start()
                try:
                    outcome = await asyncio.to_thread(worker.check, data, max_pixels,
                                                      timeout_s)
                except _Gone:
                    self._drop(worker)
                    if attempt == 2:
                        raise InvalidImage("the image could not be decoded: the decoder "
                                           "stopped on it", code="decode_failed") from None
                    continue
                except _Timeout:
                    self._drop(worker)
                    raise InvalidImage(
                        f"the image took longer than {timeout_s:g} s to decode, the limit; "
                        "send it in a simpler encoding (PNG, or a baseline JPEG)",
                        code="decode_too_slow") from None
                except BaseException:  # the request went away mid-decode: stop it too
                    self._drop(worker)
                    raise
                self._idle.append(worker)
                break
        if isinstance(outcome, UpscalerError):
            raise outcome
        if outcome is not None:
            raise RuntimeError(f"the check decode failed: {outcome}")

    def _start(self) -> _Worker:
        worker = _Worker()
        self._all.add(worker)
        return worker

    def _drop(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)

    @property
    def processes(self) -> list[int]:
        """The worker processes' ids (tests, diagnostics)."""
        return [w.proc.pid for w in self._all if w.proc.poll() is None]

    def close(self) -> None:
        for worker in list(self._all):
            self._drop(worker)
        self._idle.clear()


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A worker's loop: one check decode per request, until the parent closes the pipe."""
    # The decoders' imports (16-bit, streamed): once here, not inside a decode's time limit.
    import imagecodecs  # noqa: F401
    import pyvips  # noqa: F401
    import tifffile  # noqa: F401

    from upscaler.compute.memory import trim_heap
    from upscaler.compute.streamed_decode import check_decodes

    answers.write(READY)
    answers.flush()
    while (head := _read_exact(requests, REQUEST.size)) is not None:
        max_pixels, size = REQUEST.unpack(head)
        data = _read_exact(requests, size)
        if data is None:
            return
        outcome: object = None
        try:
            check_decodes(data, max_pixels)
        except UpscalerError as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - told to the parent, which logs it
            outcome = f"{type(exc).__name__}: {exc}"
        del data
        trim_heap()  # an idle worker keeps no decode's memory
        blob = pickle.dumps(outcome)
        answers.write(ANSWER.pack(len(blob)) + blob)
        answers.flush()


if __name__ == "__main__":
    # The protocol keeps the real stdout; anything a library prints goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, protocol)
