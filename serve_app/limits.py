"""Bounds on what one Ingress replica takes in: upload bodies counted as they stream (chunked
ones too) and timed, upscale requests in progress, and memory spent decoding uploads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import upscaler_error_response
from upscaler.errors import (
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UpscalerError,
)

# Multipart framing around the file: a body this much over the upload cap is still taken.
MULTIPART_SLACK = 64 * 1024
# All request headers together (h11's own limit; Ray's proxy sets none).
MAX_HEADER_BYTES = 16 * 1024
BUSY_RETRY_S = 2


class RequestLimits:
    """ASGI middleware: headers over ``MAX_HEADER_BYTES`` get 431; a request body over
    ``max_bytes`` gets 413, one that stalls for ``idle_s`` or is still arriving after
    ``total_s`` gets 408. The body is cut off where the limit is crossed (the app sees its end
    there), never read or buffered whole; whatever the app then answers is replaced by the
    413/408."""

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
        refused: list[UpscalerError] = []
        received, deadline = 0, time.monotonic() + self.total_s

        async def limited_receive() -> Message:
            nonlocal received
            if refused:
                return {"type": "http.request", "body": b"", "more_body": False}
            timeout = min(self.idle_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(timeout, 0.001))
            except asyncio.TimeoutError:
                refused.append(RequestTimeout(
                    f"the upload stalled or took too long (limits: {self.idle_s:g} s without "
                    f"data, {self.total_s:g} s in all)"))
                return {"type": "http.request", "body": b"", "more_body": False}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused.append(PayloadTooLarge(
                        f"the upload is larger than the limit of "
                        f"{self.max_bytes - MULTIPART_SLACK:,} bytes"))
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                if not started:  # the app answered the cut-off body: answer the reason
                    started = True
                    await _send_error(send, refused[0])
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


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
