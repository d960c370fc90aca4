"""Webhook deliveries from the Ingress (Standard Webhooks): signed, sent by a bounded worker
pool, retried with backoff, and durable: each delivery lives in its job record, claimed by one
sender at a time, and any replica's sweep goes on with it. Design: docs/design/webhooks.md
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from serve_app.presenters import job_status
from serve_app.webhook_guard import DeliveryDropped, WebhookResolver, revoked_key
from serve_app.webhook_http import AttemptTimeout, judge, new_client, next_delay, post_signed
from serve_app.webhook_slots import Item, KeyId, KeySlots
from upscaler.domain.job_store import JobNotFound, JobStore
from upscaler.domain.jobs import JobRecord
from upscaler.domain.keys import KeyStore
from upscaler.domain.webhooks import JOB_END_EVENTS, WebhookDelivery, WebhookEvent, WebhookState
from upscaler.errors import InvalidRequest
from upscaler.settings import Settings

logger = logging.getLogger("ray.serve")


class WebhookSender:
    def __init__(self, settings: Settings, store: JobStore, keys: KeyStore | None = None,
                 live: Callable[[str], JobRecord | None] = lambda _: None):
        self.settings = settings
        self.store = store
        self.keys = keys  # the keys' webhook secrets, read when signing
        self.live = live  # the record of a job this replica's runner drives, else None
        self.owner = uuid.uuid4().hex  # this sender, in the deliveries it claims
        self.resolver = WebhookResolver(settings)
        # An attempt's claim outlasts it (its look-up, then its one deadline) with room;
        # a claim between attempts outlasts the wait by a lease's length.
        self.claim_s = 3 * settings.webhook_timeout_s + settings.stale_after_s
        self._queue: asyncio.Queue[Item] = asyncio.Queue(settings.webhook_queue_size)
        # Queued, waiting for a retry or being sent here, by key.
        self._slots = KeySlots(settings.webhook_concurrency_per_key)
        self._workers: list[asyncio.Task] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._last_progress: dict[str, float] = {}
        self._client: httpx.AsyncClient | None = None

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self._client = new_client(s.webhook_timeout_s, s.webhook_concurrency)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(s.webhook_concurrency)]
        self._workers.append(loop.create_task(self._sweep_loop()))

    async def stop(self, drain_s: float = 5.0) -> None:
        """Give queued deliveries ``drain_s`` to go out; retries still waiting stay pending
        in their records, for another replica's sweep once their claims run out."""
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
        self.resolver.close()

    def pending(self, key_id: KeyId) -> int:
        """The key's deliveries held here (queued, waiting for a retry, being sent)."""
        return self._slots.pending(key_id)

    # --- events (the runner's hooks) -----------------------------------------------------
    def record(self, job: JobRecord, event: WebhookEvent) -> None:
        """Add a pending delivery of an event to the job's record, if its webhook wants it
        (progress: at most one per ``webhook_progress_interval_s``). Nothing is sent until
        ``send_pending``: a job's end is sent once its record (with the delivery) is saved."""
        hook = job.webhooks
        if hook is None or not hook.wants(event):
            return
        now = time.monotonic()
        if event == "progress":
            last = self._last_progress.get(job.job_id)
            if last is not None and now - last < self.settings.webhook_progress_interval_s:
                return
            self._last_progress[job.job_id] = now
        elif event in JOB_END_EVENTS:
            self._last_progress.pop(job.job_id, None)
        at = time.time()
        hook.add(WebhookDelivery(id=f"msg_{uuid.uuid4().hex}", event=event,
                                 created_at=at, payload=_body(job, event),
                                 owner=self.owner, claimed_until=at + self.claim_s))

    def send_pending(self, job: JobRecord) -> None:
        """Queue the job's pending deliveries (a retry at its time)."""
        if job.webhooks is None:
            return
        now = time.time()
        for delivery in job.webhooks.pending:
            self._schedule((job.job_id, delivery.id), job.api_key_id,
                           max(0.0, (delivery.next_attempt_at or now) - now))

    def notify(self, job: JobRecord, event: WebhookEvent) -> None:
        """Record an event and send it at once (an event of a running job)."""
        self.record(job, event)
        self.send_pending(job)

    def _schedule(self, item: Item, key: KeyId, delay: float) -> None:
        if not self._slots.hold(item, key):
            return
        if delay <= 0:
            self._enqueue(item)
            return

        def due() -> None:
            self._timers.discard(timer)
            self._enqueue(item)

        timer = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(timer)

    def _enqueue(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:  # it stays pending in its record: a later sweep sends it
            self._slots.drop(item)
            logger.warning("webhook queue full; delivery %s of job %s waits", item[1], item[0])

    # --- delivering ----------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if not self._slots.start(item):  # its key's senders are all busy: parked
                self._queue.task_done()
                continue
            retry_in = None
            try:
                retry_in = await self._attempt(item, self._slots.key(item))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one delivery must not stop the worker
                logger.exception("webhook delivery for job %s failed", item[0])
            finally:  # held until its attempt is over: a sweep meanwhile leaves it alone
                key, following = self._slots.finish(item)
                self._queue.task_done()
            if following is not None:
                self._enqueue(following)
            if retry_in is not None:
                self._schedule(item, key, retry_in)

    async def _attempt(self, item: Item, key_id: KeyId) -> float | None:
        """One attempt of a delivery, if it is this sender's to make; seconds to its next
        attempt, or None when there is none here."""
        job_id, delivery_id = item
        live = self.live(job_id)
        driven = live is not None and not live.state.is_terminal
        if driven:  # the runner's lease covers it (whoever sent it before), its saves store it
            assert live is not None
            hook = live.webhooks
            delivery = hook.find(delivery_id) if hook is not None else None
            if hook is None or delivery is None or delivery.done:
                return None
            send = self._begin(hook, delivery)
        else:
            claimed = await asyncio.to_thread(self._claim, job_id, delivery_id)
            if claimed is None:  # ended, open elsewhere, or another sender's now
                return None
            hook, delivery, send = claimed
        if send:
            retry_after = await self._send(hook, delivery, key_id)
            if not delivery.done:
                self._plan_retry(delivery, retry_after)
            delivery.finish()
        if not driven or self.live(job_id) is not live or live.state.is_terminal:
            await asyncio.to_thread(self._store_outcome, job_id, hook, delivery)
        if delivery.done or delivery.next_attempt_at is None:
            return None
        return max(0.0, delivery.next_attempt_at - time.time())

    def _begin(self, hook: WebhookState, delivery: WebhookDelivery) -> bool:
        return delivery.begin_attempt(self.owner, time.time(), self.claim_s,
                                      self.settings.webhook_retry_for_s, hook.disabled)

    async def _send(self, hook: WebhookState, delivery: WebhookDelivery,
                    key_id: KeyId) -> float | None:
        """One attempt; its outcome goes into ``delivery``. The Retry-After asked for."""
        assert self._client is not None
        try:
            signer = await asyncio.to_thread(self._signer, hook, key_id)
            target = await self.resolver.resolve(hook.url)  # the guard, again
            body = (delivery.payload or "").encode()
            response = await post_signed(self._client, signer, target, delivery.id, body,
                                         self.settings.webhook_timeout_s)
            return judge(hook, delivery, response)
        except DeliveryDropped as exc:
            delivery.state, delivery.last_error = "dropped", str(exc)
        except InvalidRequest as exc:  # no longer passes the guard, or no secret: no retry
            delivery.state, delivery.last_error = "failed", exc.message
        except (httpx.HTTPError, AttemptTimeout) as exc:
            delivery.last_error = f"{type(exc).__name__}: {exc}"[:300]
        except TimeoutError:  # the DNS look-up: retried
            delivery.last_error = (f"looking up the webhook's host took longer than "
                                   f"{self.settings.webhook_dns_timeout_s:g} s")
        return None

    def _signer(self, hook: WebhookState, key_id: KeyId) -> Webhook:
        """The key's current secret (a rotation applies from the next attempt), else the
        server's; DeliveryDropped when the job's key was revoked (never signed with it)."""
        if (revoked := revoked_key(self.keys, key_id, hook.signing_key_id)) is not None:
            raise DeliveryDropped(f"the API key {revoked} was revoked: not sent")
        if hook.signing_key_id is not None:
            secret = self.keys.webhook_secret(hook.signing_key_id) if self.keys else None
            if secret is None:
                raise InvalidRequest(f"the API key {hook.signing_key_id} that signs this "
                                     "webhook has no secret any more")
            return Webhook(secret)
        if self.settings.webhook_secret is None:
            raise InvalidRequest("the server has no UPSCALER_WEBHOOK_SECRET any more")
        return Webhook(self.settings.webhook_secret.get_secret_value())

    def _plan_retry(self, delivery: WebhookDelivery, retry_after: float | None) -> None:
        s = self.settings
        delay = next_delay(delivery.attempts, retry_after, s.webhook_backoff_s,
                           s.webhook_backoff_max_s)
        now = time.time()
        if now + delay - delivery.created_at > s.webhook_retry_for_s:
            delivery.state = "failed"
            delivery.last_error = (f"{delivery.last_error}; gave up after {delivery.attempts} "
                                   f"attempt(s) in {s.webhook_retry_for_s:.0f} s")
            return
        delivery.next_attempt_at = now + delay
        delivery.claimed_until = delivery.next_attempt_at + self.claim_s

    # --- the record (in threads) ---------------------------------------------------------
    def _claim(self, job_id: str,
               delivery_id: str) -> tuple[WebhookState, WebhookDelivery, bool] | None:
        """Claim the next attempt of an ended job's delivery by a conditional write: of two
        senders, one wins. None: not this sender's to send now."""
        def change(stored: JobRecord) -> JobRecord | None:
            hook = stored.webhooks
            if not stored.state.is_terminal or hook is None:  # open: its driver's
                return None
            delivery = hook.find(delivery_id)
            if delivery is None or not delivery.claimable_by(self.owner, time.time()):
                return None
            if delivery.payload is None:  # pending in a record from before bodies were kept
                delivery.payload = _body(stored, delivery.event)
            self._begin(hook, delivery)
            return stored

        try:
            written = self.store.update(job_id, change)
        except JobNotFound:
            self.store.forget_webhooks(job_id)
            return None
        if written is None or written.webhooks is None:
            return None
        delivery = written.webhooks.find(delivery_id)
        assert delivery is not None
        if delivery.done:  # the claim ended it (disabled, or its retries spent)
            self._forget_if_done(written)
            return None
        return written.webhooks, delivery, True

    def _store_outcome(self, job_id: str, hook: WebhookState, delivery: WebhookDelivery) -> None:
        """Write an attempt's outcome into the stored record (a conditional update: only this
        delivery, and the webhook's ``disabled``, change)."""
        def change(stored: JobRecord) -> JobRecord | None:
            mine = stored.webhooks
            if mine is None:
                return None
            found = mine.find(delivery.id)
            if found is None and not stored.state.is_terminal:
                # Its driver has not saved it yet, and that save may be serialised already
                # (attempt pending, no status) and land after this read: written here, it
                # makes that save conflict and store the live record again, outcome included.
                mine.deliveries.append(delivery.model_copy())
            elif found is None or found.owner not in (None, self.owner):
                return None  # dropped past the bound, or claimed by another sender since
            else:
                mine.deliveries[mine.deliveries.index(found)] = delivery.model_copy()
            mine.disabled = mine.disabled or hook.disabled
            return stored

        try:
            written = self.store.update(job_id, change)
        except JobNotFound:
            self.store.forget_webhooks(job_id)
            return
        except Exception:  # noqa: BLE001 - storage down: the claim runs out, a sweep retries
            logger.exception("saving webhook delivery of job %s failed", job_id)
            return
        if written is not None:
            self._forget_if_done(written)

    def _forget_if_done(self, job: JobRecord) -> None:
        if job.state.is_terminal and (job.webhooks is None or not job.webhooks.pending):
            self.store.forget_webhooks(job.job_id)

    # --- the sweep -----------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stale_after_s / 2)
            await self.sweep()

    async def sweep(self) -> None:
        """Go on with the pending deliveries of ended jobs whose sender's claim ran out (its
        replica died) or that are this sender's and not waiting here; drop the marks of jobs
        whose deliveries are all finished, or that are gone."""
        try:
            job_ids = await asyncio.to_thread(self.store.webhook_job_ids)
        except Exception:  # noqa: BLE001 - storage down: the next sweep tries again
            logger.exception("webhook sweep failed")
            return
        for job_id in job_ids:
            if self.live(job_id) is not None:
                continue  # driven here: its runner sends them
            try:
                job = await asyncio.to_thread(self.store.load, job_id)
            except JobNotFound:
                await asyncio.to_thread(self.store.forget_webhooks, job_id)
                continue
            except Exception:  # noqa: BLE001 - one unreadable record must not stop the rest
                logger.exception("webhook sweep: reading job %s failed", job_id)
                continue
            if not job.state.is_terminal:
                continue  # open: its driver's, or the job sweep's once its lease runs out
            if job.webhooks is None or not job.webhooks.pending:
                await asyncio.to_thread(self.store.forget_webhooks, job_id)
                continue
            now = time.time()
            for delivery in job.webhooks.pending:
                if delivery.claimable_by(self.owner, now):
                    self._schedule((job_id, delivery.id), job.api_key_id,
                                   max(0.0, (delivery.next_attempt_at or now) - now))


def _body(job: JobRecord, event: WebhookEvent) -> str:
    """An event's message: the job's status now (without its webhooks)."""
    status = job_status(job).model_dump(mode="json", exclude={"webhooks"})
    return json.dumps({"type": f"job.{event}", "timestamp": _iso_now(), "data": status})


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
