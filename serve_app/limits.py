"""Bounds on what one Ingress replica takes in: upload bodies counted as they stream (chunked
ones too) and timed, upscale requests in progress, requests without a key, and event streams
open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import upscaler_error_response
from upscaler.errors import (
    HeadersTooLarge,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    UpscalerError,
)
from upscaler.settings import Settings

# Multipart framing around the file: a body this much over the upload cap is still taken.
MULTIPART_SLACK = 64 * 1024
# All request headers together (h11's own limit; Ray's proxy sets none).
MAX_HEADER_BYTES = 16 * 1024
# What the app is told where a body is cut off: it ends here.
END_OF_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}
BUSY_RETRY_S = 2


def request_limits(settings: Settings) -> dict[str, Any]:
    """RequestLimits' arguments from the settings (the Ingress's, or a proxy's)."""
    return {"max_bytes": settings.max_upload_bytes, "idle_s": settings.upload_idle_timeout_s,
            "total_s": settings.upload_timeout_s, "min_rate": settings.upload_min_bytes_per_s,
            "min_rate_after_s": settings.upload_min_rate_after_s}


class RequestLimits:
    """ASGI middleware: headers over ``MAX_HEADER_BYTES`` get 431; a request body over
    ``max_bytes`` gets 413, one that stalls for ``idle_s``, is still arriving after
    ``total_s``, or averages under ``min_rate`` bytes/s once ``min_rate_after_s`` have passed
    gets 408. The answer goes out as soon as a limit is crossed, with ``Connection: close``;
    the app is told the body ended there, and whatever it answers after is dropped. Nothing
    past the limit is read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_s: float, total_s: float,
                 min_rate: float = 0, min_rate_after_s: float = 10):
        self.app = app
        self.max_bytes, self.idle_s, self.total_s = max_bytes + MULTIPART_SLACK, idle_s, total_s
        self.min_rate, self.min_rate_after_s = min_rate, min_rate_after_s

    def _too_slow_at(self, state: _BodyState) -> float:
        """When the body's average rate falls under ``min_rate`` if nothing more comes."""
        if not self.min_rate:
            return float("inf")
        return state.start + max(self.min_rate_after_s, state.received / self.min_rate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await send_error(send, HeadersTooLarge(
                f"the request's headers are over {MAX_HEADER_BYTES // 1024} KB"))
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, PayloadTooLarge(
                f"the upload is {int(length):,} bytes; the limit is "
                f"{self.max_bytes - MULTIPART_SLACK:,} bytes"))
            return
        now = time.monotonic()
        state = _BodyState(start=now, deadline=now + self.total_s)

        async def limited_receive() -> Message:
            if state.refused:
                # Asked again after the cut (Serve's proxy reads until the client is gone):
                # wait for the client to go (our answer closes the connection), dropping
                # what it still sends. Never answer at once in a loop: that would spin.
                while (message := await receive())["type"] == "http.request":
                    pass
                return message
            if state.body_done:  # waiting for a disconnect, while the answer is made
                return await receive()
            now = time.monotonic()
            timeout = min(self.idle_s, state.deadline - now, self._too_slow_at(state) - now)
            try:
                message = await asyncio.wait_for(receive(), max(timeout, 0.001))
            except asyncio.TimeoutError:
                return await refuse(self._timeout())
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                state.body_done = not message.get("more_body", False)
                if state.received > self.max_bytes:
                    return await refuse(PayloadTooLarge(
                        f"the upload is larger than the limit of "
                        f"{self.max_bytes - MULTIPART_SLACK:,} bytes"))
                if not state.body_done and time.monotonic() > self._too_slow_at(state):
                    return await refuse(self._timeout())
            return message

        async def refuse(error: UpscalerError) -> Message:
            state.refused = True
            if not state.answered:
                state.answered = True
                await send_error(send, error)
            return END_OF_BODY

        async def guarded_send(message: Message) -> None:
            if state.refused:
                return  # we answered already
            if message["type"] == "http.response.start":
                state.answered = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _timeout(self) -> RequestTimeout:
        rate = (f", under {self.min_rate / 1024:g} KB/s on average after the first "
                f"{self.min_rate_after_s:g} s" if self.min_rate else "")
        return RequestTimeout(f"the upload stalled, was too slow or took too long (limits: "
                              f"{self.idle_s:g} s without data{rate}, {self.total_s:g} s in all)")


@dataclass
class _BodyState:
    start: float
    deadline: float
    received: int = 0
    body_done: bool = False
    refused: bool = False
    answered: bool = False  # a response has started (ours, or the app's)


async def send_error(send: Send, error: UpscalerError, close: bool = True) -> None:
    """Answer ``error``; ``close``: close the connection too, so what the client still sends
    is not read (else the server reads and drops the rest of the body, and the connection
    stays open: a client still sending its body may miss an answer whose close races it)."""
    response = upscaler_error_response(error)
    if close:
        response.headers["Connection"] = "close"
    response.headers["X-Content-Type-Options"] = "nosniff"
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class _Slots:
    """Requests of one kind in progress on this replica, overall and per caller."""

    def __init__(self) -> None:
        self.in_use = 0
        self._by_caller: dict[str, int] = {}

    def mine(self, caller: str) -> int:
        return self._by_caller.get(caller, 0)

    @contextmanager
    def _held(self, caller: str) -> Iterator[None]:
        self.in_use += 1
        self._by_caller[caller] = self.mine(caller) + 1
        try:
            yield
        finally:
            self.in_use -= 1
            left = self._by_caller[caller] - 1
            if left:
                self._by_caller[caller] = left
            else:
                del self._by_caller[caller]


class UploadSlots(_Slots):
    """Upscale requests in progress on this replica, from their headers to their answer (taken
    by serve_app/gate.py before a byte of the body is read): past ``limit`` 503, past
    ``per_key`` for one key 429, at once, so uploads never take the slots health and status
    answer from."""

    def __init__(self, limit: int, per_key: int):
        super().__init__()
        self.limit, self.per_key = limit, per_key

    @contextmanager
    def take(self, key_id: str | None) -> Iterator[None]:
        """A slot for an upload of ``key_id`` (None: keys are off, no per-key cap)."""
        caller = key_id or ""
        if key_id is not None and self.mine(caller) >= self.per_key:
            raise RateLimited(f"this key has {self.mine(caller)} uploads in progress here, the "
                              "limit; wait for one to be answered", code="too_many_uploads",
                              retry_after=BUSY_RETRY_S)
        if self.in_use >= self.limit:
            raise ServiceUnavailable(f"{self.in_use} uploads are being taken in here, the "
                                     "limit; retry shortly", code="busy",
                                     retry_after=BUSY_RETRY_S)
        with self._held(caller):
            yield


class KeylessSlots(_Slots):
    """Requests without a valid key in progress on this replica (keys on: health's liveness,
    the page, the docs); past ``limit`` 503 at once."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    @contextmanager
    def take(self) -> Iterator[None]:
        if self.in_use >= self.limit:
            raise ServiceUnavailable(f"{self.in_use} requests without an API key are open "
                                     "here, the limit; retry shortly", code="busy",
                                     retry_after=BUSY_RETRY_S)
        with self._held(""):
            yield


class StreamSlots(_Slots):
    """Event streams open on this replica: each holds one of its request slots for as long as
    its job runs, so they are capped overall (503) and per caller (429)."""

    @contextmanager
    def take(self, caller: str, overall: int, per_caller: int) -> Iterator[None]:
        if self.in_use >= overall:
            raise ServiceUnavailable(f"{self.in_use} event streams are open here, the limit; "
                                     "retry shortly or poll /api/status", code="busy",
                                     retry_after=BUSY_RETRY_S)
        mine = self.mine(caller)
        if mine >= per_caller:
            raise RateLimited(f"this key has {mine} event streams open, the limit; close one "
                              "or poll /api/status", code="too_many_streams",
                              retry_after=BUSY_RETRY_S)
        with self._held(caller):
            yield
