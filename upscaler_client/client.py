"""``Client`` (sync) and ``AsyncClient``: the same operations (``core.Core``), each run by a
driver that does the HTTP with httpx, sleeps, and keeps an events stream open."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from upscaler_client.core import (
    STREAM_ERRORS,
    CloseEvents,
    Core,
    Flow,
    NextEvent,
    OpenEvents,
    ProgressCallback,
    Send,
    Sleep,
    Source,
)
from upscaler_client.downloads import Download
from upscaler_client.models import Job, UpscaleResult

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, options: dict[str, Any]):
        core_keys = ("max_retries", "max_retry_wait", "poll_interval", "use_events")
        self._core = Core(base_url, api_key, **{k: options.pop(k) for k in core_keys
                                                 if k in options})
        self._http_options = {"timeout": DEFAULT_TIMEOUT, **options}

    @property
    def base_url(self) -> str:
        return self._core.base_url


class Client(_Base):
    """The upscaler API, synchronously.

    >>> with Client() as c:                       # UPSCALER_URL, UPSCALER_API_KEY
    ...     result = c.upscale("photo.jpg", model="4x-UltraSharp", print_size="24x16in",
    ...                        dpi=300, format="tiff", output="out.tiff")

    Options are the API's form fields (``upscale_factor``, ``target_dpi``, ``tile_size``,
    ``denoise``...) or their short names (``factor``, ``dpi``, ``format``, ``crop``,
    ``print_size="30x40cm"``, ``pixels="4000x3000"``). Other keyword arguments go to
    ``httpx.Client`` (``transport``, ``verify``, ``timeout``...).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 **options: Any) -> None:
        super().__init__(base_url, api_key, options)
        self._http = httpx.Client(base_url=self._core.base_url, headers=self._core.headers(),
                                  **self._http_options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def upscale(self, source: Source, engine: str = "esrgan", *,
                output: str | os.PathLike | None = None, filename: str | None = None,
                on_progress: ProgressCallback | None = None, timeout: float | None = None,
                idempotency_key: str | None = None, **options: Any) -> UpscaleResult:
        """Upscale one image; the result's bytes (or the path it was written to, ``output``:
        a file or a folder) and the job's last status. The POST carries ``idempotency_key``
        (else a new UUID) on every attempt: a retry never makes a second job."""
        return self._run(self._core.upscale(source, engine, options, output, filename,
                                            on_progress, timeout, idempotency_key))

    def submit(self, source: Source, engine: str = "esrgan", *, filename: str | None = None,
               on_progress: ProgressCallback | None = None, idempotency_key: str | None = None,
               **options: Any) -> Job:
        """Start a job and return at once (``queued``)."""
        return self._run(self._core.submit(source, engine, options, filename, on_progress,
                                           idempotency_key))

    def wait(self, job: Job | str, *, on_progress: ProgressCallback | None = None,
             timeout: float | None = None) -> Job:
        return self._run(self._core.wait(job, on_progress, timeout))

    def download(self, job: Job, output: str | os.PathLike | None = None) -> bytes | Path:
        data, path = self._run(self._core.download(job, output))
        return path if path is not None else data

    def status(self, job_id: str) -> Job:
        return self._run(self._core.status(job_id))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._core.cancel(job_id))

    def health(self) -> dict[str, Any]:
        return self._run(self._core.health())

    def models(self) -> dict[str, Any]:
        return self._run(self._core.models())

    def usage(self) -> dict[str, Any]:
        """This key's usage today and its limits: each ``{"used", "limit"}``."""
        return self._run(self._core.usage())

    # --- the driver ------------------------------------------------------------------------
    def _run(self, flow: Flow) -> Any:
        answer: Any = None
        error: BaseException | None = None
        events: tuple[httpx.Response, Iterator[ServerSentEvent]] | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error else flow.send(answer)
                except StopIteration as stop:
                    return stop.value
                answer, error = None, None
                try:
                    if isinstance(step, Send):
                        answer = self._http.request(step.method, step.url, **step.kwargs)
                    elif isinstance(step, Sleep):
                        time.sleep(step.seconds)
                    elif isinstance(step, OpenEvents):
                        events = self._close(events)
                        answer, events = self._open_events(step.request)
                    elif isinstance(step, NextEvent):
                        assert events is not None
                        answer = next(events[1], None)
                    elif isinstance(step, CloseEvents):
                        events = self._close(events)
                    elif isinstance(step, Download):
                        answer = self._download(step)
                except STREAM_ERRORS as exc:
                    error = exc
        finally:
            self._close(events)
            flow.close()

    def _open_events(self, send: Send):
        request = self._http.build_request(send.method, send.url, **send.kwargs)
        response = self._http.send(request, stream=True)
        if response.status_code != 200:
            response.read()
            response.close()
            return response, None
        return response, (response, EventSource(response).iter_sse())

    @staticmethod
    def _close(events) -> None:
        if events is not None:
            events[0].close()

    def _download(self, step: Download) -> tuple[httpx.Response, bytes | None]:
        with self._http.stream("GET", step.url, headers=step.headers()) as response:
            if step.path is None or response.status_code not in (200, 206):
                return response, response.read()
            try:
                # Chunks as they arrive: a chunk size would hold back what came before a break.
                with step.open_part(response) as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
                        step.wrote(len(chunk))
            except httpx.TransportError:
                raise  # the part stays: the core goes on from it
            except BaseException:
                step.discard()
                raise
            step.finish()
            return response, None


class AsyncClient(_Base):
    """The upscaler API with asyncio: the same methods as ``Client``, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 **options: Any) -> None:
        super().__init__(base_url, api_key, options)
        self._http = httpx.AsyncClient(base_url=self._core.base_url,
                                       headers=self._core.headers(), **self._http_options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def upscale(self, source: Source, engine: str = "esrgan", *,
                      output: str | os.PathLike | None = None, filename: str | None = None,
                      on_progress: ProgressCallback | None = None,
                      timeout: float | None = None, idempotency_key: str | None = None,
                      **options: Any) -> UpscaleResult:
        return await self._run(self._core.upscale(source, engine, options, output, filename,
                                                  on_progress, timeout, idempotency_key))

    async def submit(self, source: Source, engine: str = "esrgan", *,
                     filename: str | None = None, on_progress: ProgressCallback | None = None,
                     idempotency_key: str | None = None, **options: Any) -> Job:
        return await self._run(self._core.submit(source, engine, options, filename,
                                                 on_progress, idempotency_key))

    async def wait(self, job: Job | str, *, on_progress: ProgressCallback | None = None,
                   timeout: float | None = None) -> Job:
        return await self._run(self._core.wait(job, on_progress, timeout))

    async def download(self, job: Job, output: str | os.PathLike | None = None
                       ) -> bytes | Path:
        data, path = await self._run(self._core.download(job, output))
        return path if path is not None else data

    async def status(self, job_id: str) -> Job:
        return await self._run(self._core.status(job_id))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(self._core.cancel(job_id))

    async def health(self) -> dict[str, Any]:
        return await self._run(self._core.health())

    async def models(self) -> dict[str, Any]:
        return await self._run(self._core.models())

    async def usage(self) -> dict[str, Any]:
        """This key's usage today and its limits: each ``{"used", "limit"}``."""
        return await self._run(self._core.usage())

    # --- the driver ------------------------------------------------------------------------
    async def _run(self, flow: Flow) -> Any:
        answer: Any = None
        error: BaseException | None = None
        events: tuple[httpx.Response, AsyncIterator[ServerSentEvent]] | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error else flow.send(answer)
                except StopIteration as stop:
                    return stop.value
                answer, error = None, None
                try:
                    if isinstance(step, Send):
                        answer = await self._http.request(step.method, step.url, **step.kwargs)
                    elif isinstance(step, Sleep):
                        await asyncio.sleep(step.seconds)
                    elif isinstance(step, OpenEvents):
                        events = await self._close(events)
                        answer, events = await self._open_events(step.request)
                    elif isinstance(step, NextEvent):
                        assert events is not None
                        answer = await anext(events[1], None)
                    elif isinstance(step, CloseEvents):
                        events = await self._close(events)
                    elif isinstance(step, Download):
                        answer = await self._download(step)
                except STREAM_ERRORS as exc:
                    error = exc
        finally:
            await self._close(events)
            flow.close()

    async def _open_events(self, send: Send):
        request = self._http.build_request(send.method, send.url, **send.kwargs)
        response = await self._http.send(request, stream=True)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            return response, None
        return response, (response, EventSource(response).aiter_sse())

    @staticmethod
    async def _close(events) -> None:
        if events is not None:
            await events[0].aclose()

    async def _download(self, step: Download) -> tuple[httpx.Response, bytes | None]:
        async with self._http.stream("GET", step.url, headers=step.headers()) as response:
            if step.path is None or response.status_code not in (200, 206):
                return response, await response.aread()
            try:
                with step.open_part(response) as f:
                    async for chunk in response.aiter_bytes():
                        f.write(chunk)
                        step.wrote(len(chunk))
            except httpx.TransportError:
                raise  # the part stays: the core goes on from it
            except BaseException:
                step.discard()
                raise
            step.finish()
            return response, None

