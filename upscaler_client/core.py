"""The client's logic, written once for the sync and the async client: each operation is a
generator that yields the I/O it needs (``Send``, ``Sleep``, an events stream, a download) and
gets the answer back; ``Client`` and ``AsyncClient`` only run those steps (``drivers.py``).

How an upscale runs: POST the image (``Prefer: respond-async``, an ``Idempotency-Key`` kept
across retries), wait on ``GET /api/jobs/{id}/events`` (server-sent events; ``Last-Event-ID``
on reconnect) or, when the service has no events route (404/405) or the stream keeps breaking,
poll ``GET /api/status/{id}``; then download the result. 429 and 503 answers are retried after
their ``Retry-After`` (bounded), a connection lost or not opened after a backoff, and so is what
a proxy in front answers for a server process lost mid-request (a 5xx that is not the API's
JSON, or the API's 503 ``replica_lost``): the POST is repeated with its ``Idempotency-Key``, so
the service answers it with the job the first attempt made, never a second one.
"""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from httpx_sse import ServerSentEvent, SSEError

from upscaler_client.downloads import Download
from upscaler_client.errors import (
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    UpscalerClientError,
    WaitTimeout,
    api_error,
)
from upscaler_client.models import Job, ProgressUpdate, UpscaleResult
from upscaler_client.options import check_engine, form_fields

DEFAULT_URL = "http://127.0.0.1:8000"
Source = str | os.PathLike | bytes | IO[bytes]
ProgressCallback = Callable[[ProgressUpdate], None]
Flow = Generator[Any, Any, Any]


# --- the steps a flow asks its driver for ------------------------------------------------------

@dataclass
class Send:
    """Send a request; answer: the ``httpx.Response``, body read."""

    method: str
    url: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sleep:
    seconds: float


@dataclass
class OpenEvents:
    """Open an events stream; answer: the response (its body read unless it is 200, then the
    driver keeps the stream open for ``NextEvent``)."""

    request: Send


@dataclass
class NextEvent:
    """Answer: the stream's next ``ServerSentEvent``, or None at its end."""


@dataclass
class CloseEvents:
    pass


STREAM_ERRORS = (httpx.TransportError, SSEError)
# Answers worth repeating the request for (see ``Core._retry_delay``); those the API alone gives
# are retried only with their Retry-After.
RETRIED = (409, 429, 500, 502, 503, 504)
SAID_BY_API = (409, 429)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: a number or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0, 1, ...) when the service said nothing."""
    return min(0.5 * 2.0 ** attempt, 30.0)


def error_for(response: httpx.Response) -> UpscalerClientError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return api_error(response.status_code, body, retry_after_seconds(response))


def _is_api_error_body(response: httpx.Response) -> bool:
    try:
        return "message" in response.json()
    except (ValueError, TypeError):
        return False


def _read_source(source: Source, filename: str | None) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray)):
        return filename or "image", bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return filename or path.name, path.read_bytes()
    name = filename or Path(getattr(source, "name", "image") or "image").name
    return name, source.read()


def output_path(output: str | os.PathLike, job: Job, source_name: str) -> Path:
    """``output`` as a file, or, when it is a folder, ``<folder>/<source stem>.<ext>``."""
    path = Path(output)
    if path.is_dir():
        ext = (job.output_url or ".png").rsplit(".", 1)[-1]
        return path / f"{Path(source_name).stem}.{ext}"
    return path


class Core:
    """Settings and the operations as flows (see the module's docstring)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 max_retries: int = 5, max_retry_wait: float = 120.0,
                 poll_interval: float = 0.5, use_events: bool = True) -> None:
        self.base_url = (base_url or os.environ.get("UPSCALER_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("UPSCALER_API_KEY")
        self.max_retries, self.max_retry_wait = max_retries, max_retry_wait
        self.poll_interval, self.use_events = poll_interval, use_events

    def headers(self) -> dict[str, str]:
        # The service takes `Authorization: Bearer` or `X-API-Key` (serve_app/access.py).
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    # --- one request, with the retries ---------------------------------------------------------
    def _retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        status = response.status_code
        if status not in RETRIED or attempt >= self.max_retries:
            return None
        delay = retry_after_seconds(response)
        if delay is None:
            # The API says when to retry (409: the first request with this Idempotency-Key is
            # still being accepted; a retry then answers its job): its answers without
            # Retry-After are not transient (no model installed). A 5xx from a proxy in front
            # is: a load balancer's 502/504, Serve's proxy's plain 500 (a replica lost).
            if status in SAID_BY_API or _is_api_error_body(response):
                return None
            delay = backoff(attempt)
        return delay if delay <= self.max_retry_wait else None

    def send(self, method: str, url: str, on_progress: ProgressCallback | None = None,
             retry: bool = True, idempotent: bool = True, **kwargs: Any
             ) -> Generator[Any, Any, httpx.Response]:
        """One request; 429/503 retried after ``Retry-After``, a proxy's 5xx and a
        connection error after a backoff (``idempotent=False``: only a connection that never
        reached the service)."""
        attempt = 0
        while True:
            try:
                response = yield Send(method, url, kwargs)
            except httpx.TransportError as exc:
                can_retry = idempotent or isinstance(exc, (httpx.ConnectError,
                                                           httpx.ConnectTimeout))
                if not (retry and can_retry and attempt < self.max_retries):
                    raise ConnectionFailed(f"{method} {self.base_url}{url}: {exc!r}") from exc
                delay, reason = backoff(attempt), type(exc).__name__
            else:
                delay = self._retry_delay(response, attempt) if retry else None
                if delay is None:
                    return response
                reason = f"{response.status_code} {error_for(response).code}"
            attempt += 1
            if on_progress:
                on_progress(ProgressUpdate("retrying", message=f"{reason}; retry {attempt} "
                                           f"in {delay:.0f} s"))
            yield Sleep(delay)

    def _json(self, response: httpx.Response, ok: tuple[int, ...] = (200,)) -> Any:
        if response.status_code not in ok:
            raise error_for(response)
        return response.json()

    # --- the operations -----------------------------------------------------------------------
    def submit(self, source: Source, engine: str, options: Mapping[str, Any],
               filename: str | None = None, on_progress: ProgressCallback | None = None,
               idempotency_key: str | None = None) -> Generator[Any, Any, Job]:
        """POST the image; the job as accepted (``queued``, or already finished). One
        ``Idempotency-Key`` (``idempotency_key``, else a new UUID) for every attempt."""
        check_engine(engine)
        fields = form_fields(options)
        name, data = _read_source(source, filename)
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers = {"Prefer": "respond-async",
                   "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if on_progress:
            on_progress(ProgressUpdate("uploading", message=name))
        # Idempotent: a retry carries the same Idempotency-Key, and the service answers it
        # with the job the first attempt made (never a second job).
        response = yield from self.send(
            "POST", f"/api/upscale/{engine}", on_progress, data=fields,
            files={"file": (name, data, media)}, headers=headers)
        job = Job.from_api(self._json(response, (200, 202)))
        if on_progress:
            on_progress(ProgressUpdate(job.status, job.progress, job))  # type: ignore[arg-type]
        return job

    def status(self, job_id: str) -> Generator[Any, Any, Job]:
        response = yield from self.send("GET", f"/api/status/{job_id}")
        return Job.from_api(self._json(response))

    def cancel(self, job_id: str) -> Generator[Any, Any, Job]:
        response = yield from self.send("DELETE", f"/api/jobs/{job_id}")
        return Job.from_api(self._json(response))

    def health(self) -> Generator[Any, Any, dict[str, Any]]:
        """The health body; 503 (degraded) answers it too, so it is returned, not raised."""
        response = yield from self.send("GET", "/api/health", retry=False)
        return self._json(response, (200, 503))

    def models(self) -> Generator[Any, Any, dict[str, Any]]:
        response = yield from self.send("GET", "/api/models")
        return self._json(response)

    def usage(self) -> Generator[Any, Any, dict[str, Any]]:
        """The key's usage today and its limits (GET /api/usage)."""
        response = yield from self.send("GET", "/api/usage")
        return self._json(response)

    def wait(self, job: Job | str, on_progress: ProgressCallback | None = None,
             timeout: float | None = None) -> Generator[Any, Any, Job]:
        """Until the job ends: its events stream, else polling its status."""
        job_id = job if isinstance(job, str) else job.id
        deadline = None if timeout is None else time.monotonic() + timeout
        use_events, breaks, last_event_id, interval = self.use_events, 0, None, self.poll_interval

        def seen(update: Job) -> Job:
            if on_progress:
                on_progress(ProgressUpdate(update.status, update.progress, update))  # type: ignore[arg-type]
            if deadline is not None and not update.done and time.monotonic() > deadline:
                raise WaitTimeout(f"job {job_id} is still {update.status} after {timeout} s")
            return update

        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {job_id} did not end within {timeout} s")
            if use_events:
                headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
                if last_event_id:
                    headers["Last-Event-ID"] = last_event_id
                try:
                    response = yield OpenEvents(Send("GET", f"/api/jobs/{job_id}/events",
                                                     {"headers": headers}))
                    if response.status_code != 200:
                        # No events route here (404/405), or an answer polling explains
                        # better (a retried 429, the job's 404): poll.
                        use_events = False
                        continue
                    while (event := (yield NextEvent())) is not None:
                        last_event_id = event.id or last_event_id
                        update = job_from_event(event)
                        if update is not None and seen(update).done:
                            yield CloseEvents()
                            return update
                except STREAM_ERRORS:
                    pass
                # The stream ended or broke before the job did: reconnect where it was.
                breaks += 1
                use_events = breaks <= self.max_retries
                yield Sleep(min(0.1 * 2 ** breaks, 10.0))
                continue
            update = seen(Job.from_api(self._json((yield from self.send(
                "GET", f"/api/status/{job_id}")))))
            if update.done:
                return update
            yield Sleep(interval)
            interval = min(interval * 1.5, 2.0)

    def download(self, job: Job, output: str | os.PathLike | None = None,
                 source_name: str = "image") -> Generator[Any, Any, tuple[bytes | None,
                                                                          Path | None]]:
        """The result as bytes, or written to ``output`` (a file, or a folder); a download
        into a file that breaks off goes on from where it stopped (downloads.py)."""
        if not job.output_url:
            raise JobFailed(job)
        path = output_path(output, job, source_name) if output is not None else None
        step, attempt = Download(job.output_url, path), 0  # one step: its part is kept
        while True:
            went_on_from = step.partial.size if step.partial else 0
            try:
                response, data = yield step
            except httpx.TransportError as exc:
                if (partial := step.resumable()) is not None and partial.size > went_on_from:
                    attempt = 0  # it got further: a flaky link, not a dead one
                if attempt >= self.max_retries:
                    step.discard()
                    raise ConnectionFailed(f"GET {self.base_url}{job.output_url}: "
                                           f"{exc!r}") from exc
                delay = backoff(attempt)
            else:
                if response.status_code == 416 and step.partial is not None:
                    step.discard()  # the part is no longer a start of the result: anew
                    delay = 0.0
                elif (delay := self._retry_delay(response, attempt)) is None:
                    break
            attempt += 1
            try:
                yield Sleep(delay)
            except BaseException:  # stopped while waiting to go on: no part is left behind
                step.discard()
                raise
        if response.status_code not in (200, 206):
            step.discard()
            raise error_for(response)
        return data, path

    def upscale(self, source: Source, engine: str, options: Mapping[str, Any],
                output: str | os.PathLike | None = None, filename: str | None = None,
                on_progress: ProgressCallback | None = None, timeout: float | None = None,
                idempotency_key: str | None = None) -> Generator[Any, Any, UpscaleResult]:
        """Submit, wait, download: raises ``JobFailed``/``JobCancelled`` when the job did not
        complete."""
        name = filename or (Path(source).name if isinstance(source, (str, os.PathLike))
                            else "image")
        job = yield from self.submit(source, engine, options, name, on_progress,
                                     idempotency_key)
        if not job.done:
            job = yield from self.wait(job, on_progress, timeout)
        if job.status == "cancelled":
            raise JobCancelled(job)
        if job.status != "completed":
            raise JobFailed(job)
        if on_progress:
            on_progress(ProgressUpdate("downloading", 100, job))
        data, path = yield from self.download(job, output, name)
        return UpscaleResult(job, data, path)


def job_from_event(event: ServerSentEvent) -> Job | None:
    """An events-stream event as a job status (its data is the status body); None for
    anything else (keep-alives, events of other kinds)."""
    if not event.data:
        return None
    try:
        body = json.loads(event.data)
        return Job.from_api(body) if isinstance(body, dict) else None
    except ValueError:
        return None
