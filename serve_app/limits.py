"""Bounds on what one Ingress replica takes in: upload bodies counted as they stream (chunked
ones too) and timed, upscale requests in progress, memory spent decoding uploads, and event
streams open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

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

# Multipart framing around the file: a body this much over the upload cap is still taken.
MULTIPART_SLACK = 64 * 1024
# All request headers together (h11's own limit; Ray's proxy sets none).
MAX_HEADER_BYTES = 16 * 1024
# What the app is told where a body is cut off: it ends here.
END_OF_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}
BUSY_RETRY_S = 2


class RequestLimits:
    """ASGI middleware: headers over ``MAX_HEADER_BYTES`` get 431; a request body over
    ``max_bytes`` gets 413, one that stalls for ``idle_s`` or is still arriving after
    ``total_s`` gets 408. The answer goes out as soon as a limit is crossed, with
    ``Connection: close``; the app is told the body ended there, and whatever it answers
    after is dropped. Nothing past the limit is read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_s: float, total_s: float):
        self.app = app
        self.max_bytes, self.idle_s, self.total_s = max_bytes + MULTIPART_SLACK, idle_s, total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await _send_error(send, HeadersTooLarge(
                f"the request's headers are over {MAX_HEADER_BYTES // 1024} KB"))
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _send_error(send, PayloadTooLarge(
                f"the upload is {int(length):,} bytes; the limit is "
                f"{self.max_bytes - MULTIPART_SLACK:,} bytes"))
            return
        state = _BodyState(deadline=time.monotonic() + self.total_s)

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
            timeout = min(self.idle_s, state.deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(timeout, 0.001))
            except asyncio.TimeoutError:
                return await refuse(RequestTimeout(
                    f"the upload stalled or took too long (limits: {self.idle_s:g} s without "
                    f"data, {self.total_s:g} s in all)"))
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                state.body_done = not message.get("more_body", False)
                if state.received > self.max_bytes:
                    return await refuse(PayloadTooLarge(
                        f"the upload is larger than the limit of "
                        f"{self.max_bytes - MULTIPART_SLACK:,} bytes"))
            return message

        async def refuse(error: UpscalerError) -> Message:
            state.refused = True
            if not state.answered:
                state.answered = True
                await _send_error(send, error)
            return END_OF_BODY

        async def guarded_send(message: Message) -> None:
            if state.refused:
                return  # we answered already
            if message["type"] == "http.response.start":
                state.answered = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


@dataclass
class _BodyState:
    deadline: float
    received: int = 0
    body_done: bool = False
    refused: bool = False
    answered: bool = False  # a response has started (ours, or the app's)


async def _send_error(send: Send, error: UpscalerError) -> None:
    response = upscaler_error_response(error)
    response.headers["Connection"] = "close"  # the rest of the body is not read
    response.headers["X-Content-Type-Options"] = "nosniff"
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class UploadSlots:
    """Upscale requests in progress on this replica; past ``limit`` the answer is 503 at once,
    so a flood of uploads never takes the slots health and status answer from."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0

    @asynccontextmanager
    async def take(self) -> AsyncIterator[None]:
        if self.in_use >= self.limit:
            raise ServiceUnavailable(f"{self.in_use} uploads are being taken in here, the "
                                     "limit; retry shortly", code="busy",
                                     retry_after=BUSY_RETRY_S)
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


class StreamSlots:
    """Event streams open on this replica: each holds one of its request slots for as long as
    its job runs, so they are capped overall (503) and per caller (429)."""

    def __init__(self) -> None:
        self.in_use = 0
        self._by_caller: dict[str, int] = {}

    @contextmanager
    def take(self, caller: str, overall: int, per_caller: int) -> Iterator[None]:
        if self.in_use >= overall:
            raise ServiceUnavailable(f"{self.in_use} event streams are open here, the limit; "
                                     "retry shortly or poll /api/status", code="busy",
                                     retry_after=BUSY_RETRY_S)
        mine = self._by_caller.get(caller, 0)
        if mine >= per_caller:
            raise RateLimited(f"this key has {mine} event streams open, the limit; close one "
                              "or poll /api/status", code="too_many_streams",
                              retry_after=BUSY_RETRY_S)
        self.in_use += 1
        self._by_caller[caller] = mine + 1
        try:
            yield
        finally:
            self.in_use -= 1
            left = self._by_caller[caller] - 1
            if left:
                self._by_caller[caller] = left
            else:
                del self._by_caller[caller]
