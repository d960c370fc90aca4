"""Webhook deliveries from the Ingress (Standard Webhooks): each event a job's request asked
for is signed with the ``standardwebhooks`` package (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) and POSTed by a bounded pool of workers over a bounded queue. A failed
attempt is retried with exponential backoff (or the receiver's ``Retry-After``) for
``webhook_retry_for_s``; a 410 answer disables the job's webhook; redirects are not followed.
Every delivery's outcome is written into the job record (the status answer's ``webhooks``).

Each attempt checks the URL again (``upscaler.webhooks.resolve_target``) and connects to the
checked address itself, with the original host in ``Host`` and TLS's SNI and certificate check,
so DNS cannot hand the connection to another address between the check and the connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from serve_app.presenters import job_status
from serve_app.schemas import CommonUpscaleForm
from upscaler.errors import InvalidRequest
from upscaler.job_store import JobNotFound, JobStore
from upscaler.jobs import JobRecord
from upscaler.settings import Settings
from upscaler.webhooks import (
    AllowList,
    WebhookDelivery,
    WebhookEvent,
    WebhookState,
    WebhookTarget,
    parse_events,
    resolve_target,
)

logger = logging.getLogger("ray.serve")
Delivery = tuple[JobRecord, WebhookDelivery, bytes]


async def subscription(settings: Settings, form: CommonUpscaleForm) -> WebhookState | None:
    """A request's webhook, checked (422 with the reason) before anything is stored."""
    if not form.webhook_url:
        if form.webhook_events:
            raise InvalidRequest("webhook_events needs a webhook_url",
                                 code="invalid_webhook_events")
        return None
    if settings.webhook_secret is None:
        raise InvalidRequest("webhooks are not configured on this server (no "
                             "UPSCALER_WEBHOOK_SECRET); send the request without webhook_url",
                             code="webhooks_not_configured")
    events = parse_events(form.webhook_events)
    target = await asyncio.to_thread(resolve_target, form.webhook_url,
                                     AllowList(settings.webhook_allowed_hosts))
    return WebhookState(url=target.url, events=events)


def retry_after_s(header: str | None) -> float | None:
    """``Retry-After``: seconds, or an HTTP date."""
    if not header:
        return None
    if header.strip().isdigit():
        return float(header.strip())
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(header)
        return max(0.0, when.timestamp() - time.time())
    return None


class WebhookSender:
    def __init__(self, settings: Settings, store: JobStore,
                 is_driving: Callable[[str], bool] = lambda _: False):
        self.settings = settings
        self.store = store
        self.is_driving = is_driving  # the runner saves the records of the jobs it drives
        secret = settings.webhook_secret
        self.signer = Webhook(secret.get_secret_value()) if secret else None
        self.allowed = AllowList(settings.webhook_allowed_hosts)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(settings.webhook_queue_size)
        self._workers: list[asyncio.Task] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._last_progress: dict[str, float] = {}
        self._client: httpx.AsyncClient | None = None

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        # No proxies from the environment, no redirects: the guard decides where it goes.
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(self.settings.webhook_timeout_s),
            limits=httpx.Limits(max_connections=self.settings.webhook_concurrency))
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work())
                         for _ in range(self.settings.webhook_concurrency)]

    async def stop(self, drain_s: float = 5.0) -> None:
        """Give queued deliveries ``drain_s`` to go out; retries still waiting are dropped
        (their records say pending)."""
        with contextlib.suppress(asyncio.TimeoutError, RuntimeError):  # RuntimeError: the
            # queue is another loop's (an app whose lifespan ran twice, in tests)
            await asyncio.wait_for(self._queue.join(), drain_s)
        for timer in self._timers:
            timer.cancel()
        for task in self._workers:
            task.cancel()
        # Only this loop's: an app whose lifespan another loop also ran (a test client) has
        # workers there too.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(t for t in self._workers if t.get_loop() is loop),
                             return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # --- events (the runner's hook) ------------------------------------------------------
    def notify(self, job: JobRecord, event: WebhookEvent) -> None:
        """Queue an event of a job, if its webhook wants it (progress: at most one per
        ``webhook_progress_interval_s``)."""
        hook = job.webhooks
        if hook is None or self.signer is None or not hook.wants(event):
            return
        now = time.monotonic()
        if event == "progress":
            last = self._last_progress.get(job.job_id)
            if last is not None and now - last < self.settings.webhook_progress_interval_s:
                return
            self._last_progress[job.job_id] = now
        elif event in ("completed", "failed", "cancelled"):
            self._last_progress.pop(job.job_id, None)
        delivery = WebhookDelivery(id=f"msg_{uuid.uuid4().hex}", event=event,
                                   created_at=time.time())
        hook.add(delivery)
        status = job_status(job).model_dump(mode="json", exclude={"webhooks"})
        body = json.dumps({"type": f"job.{event}", "timestamp": _iso_now(),
                           "data": status}).encode()
        self._enqueue((job, delivery, body))

    def _enqueue(self, item: Delivery) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            item[1].state, item[1].last_error = "dropped", "the delivery queue was full"
            asyncio.get_running_loop().create_task(self._record(item[0]))

    # --- delivering ----------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._attempt(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one delivery must not stop the worker
                logger.exception("webhook delivery for job %s failed", item[0].job_id)
            finally:
                self._queue.task_done()

    async def _attempt(self, item: Delivery) -> None:
        job, delivery, body = item
        hook = job.webhooks
        assert hook is not None and self.signer is not None
        if hook.disabled:
            delivery.state = "disabled"
            await self._record(job)
            return
        delivery.attempts += 1
        delivery.last_attempt_at, delivery.next_attempt_at = time.time(), None
        retry_after = None
        try:
            target = await asyncio.to_thread(resolve_target, hook.url, self.allowed)
            response = await self._post(target, delivery.id, body)
            delivery.status_code = response.status_code
            if response.is_success:
                delivery.state, delivery.last_error = "delivered", None
                delivery.delivered_at = time.time()
            elif response.status_code == 410:  # the receiver wants no more of this job
                delivery.state, hook.disabled = "disabled", True
                delivery.last_error = "the receiver answered 410 Gone: webhook disabled"
            elif response.is_redirect:
                delivery.state = "failed"
                delivery.last_error = (f"the receiver answered {response.status_code} (to "
                                       f"{response.headers.get('location', '?')}); redirects "
                                       "are not followed")
            else:
                delivery.last_error = f"the receiver answered {response.status_code}"
                retry_after = retry_after_s(response.headers.get("retry-after"))
        except InvalidRequest as exc:  # the URL no longer passes the guard: not retried
            delivery.state, delivery.last_error = "failed", exc.message
        except httpx.HTTPError as exc:
            delivery.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if delivery.state == "pending":
            self._retry_later(item, retry_after)
        await self._record(job)

    async def _post(self, target: WebhookTarget, msg_id: str, body: bytes) -> httpx.Response:
        assert self._client is not None and self.signer is not None
        now = datetime.now(timezone.utc)
        signature = self.signer.sign(msg_id, now, body.decode())
        url = httpx.URL(target.url)
        headers = {"content-type": "application/json", "user-agent": "upscaler-webhooks",
                   "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature, "host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        # The checked addresses, in turn, not the name: the name is not resolved again.
        for n, address in enumerate(target.addresses):
            request = self._client.build_request("POST", url.copy_with(host=address),
                                                 content=body, headers=headers,
                                                 extensions=extensions)
            try:
                return await self._client.send(request)
            except httpx.ConnectError:
                if n == len(target.addresses) - 1:
                    raise
        raise AssertionError("a target has at least one address")

    def _retry_later(self, item: Delivery, retry_after: float | None) -> None:
        delivery = item[1]
        s = self.settings
        delay = retry_after if retry_after is not None else min(
            s.webhook_backoff_max_s, s.webhook_backoff_s * 2 ** (delivery.attempts - 1))
        if time.time() + delay - delivery.created_at > s.webhook_retry_for_s:
            delivery.state = "failed"
            delivery.last_error = (f"{delivery.last_error}; gave up after {delivery.attempts} "
                                   f"attempt(s) in {s.webhook_retry_for_s:.0f} s")
            return
        delivery.next_attempt_at = time.time() + delay

        def due() -> None:
            self._timers.discard(timer)
            self._enqueue(item)

        timer = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(timer)

    async def _record(self, job: JobRecord) -> None:
        """Write the deliveries into the job record: a job being driven is saved by its
        runner; a finished one is read again so only its ``webhooks`` change here."""
        if self.is_driving(job.job_id):
            return

        def with_deliveries(stored: JobRecord) -> JobRecord:
            stored.webhooks = job.webhooks
            return stored

        def write() -> None:
            try:  # a conditional update: only ``webhooks`` changes, whatever else did
                self.store.update(job.job_id, with_deliveries)
            except JobNotFound:
                return  # expired or deleted meanwhile

        try:
            await asyncio.to_thread(write)
        except Exception:  # noqa: BLE001 - storage down: the next delivery writes it again
            logger.exception("saving webhook deliveries of job %s failed", job.job_id)


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
