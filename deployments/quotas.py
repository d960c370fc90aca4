"""The quota keeper: one replica that holds every key's counters, so rate limits and quotas hold
across any number of Ingress replicas. Design: docs/design/access.md
"""

from __future__ import annotations

import asyncio
import json
import logging

from ray import serve

from deployments.common import open_job_store
from upscaler.domain.jobs import JobWork
from upscaler.domain.quotas import KeyQuota, QuotaBook, RateState, UsageFigures
from upscaler.settings import Settings

logger = logging.getLogger("ray.serve")
USAGE_KEY = "quotas/usage.json"
STORED_PREFIX = "quotas/stored-"  # + bucket + .json: {job_id: bytes} of its results kept


def stored_key(bucket: str) -> str:
    return f"{STORED_PREFIX}{bucket}.json"


@serve.deployment(name="Quotas")
class QuotaKeeper:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = open_job_store(settings)
        self.book = QuotaBook()
        self._recount()

    def _recount(self) -> None:
        try:
            self.book.restore(json.loads(self.store.storage.read_bytes(USAGE_KEY)))
        except FileNotFoundError:
            pass
        except ValueError:
            logger.warning("quota usage in %s unreadable; starting the day's count afresh",
                           USAGE_KEY)
        for key in self.store.storage.list("quotas"):
            name = key.rsplit("/", 1)[-1]
            if not (name.startswith("stored-") and name.endswith(".json")):
                continue
            try:
                jobs = json.loads(self.store.storage.read_bytes(key))
                self.book.restore_stored(name[len("stored-"):-len(".json")], jobs)
            except (FileNotFoundError, ValueError, TypeError):
                logger.warning("results kept in %s unreadable; counted afresh", key)
        for job_id in self.store.open_job_ids():
            try:
                job = self.store.load(job_id)
            except Exception:  # noqa: BLE001 - a record being written or gone: skip it
                continue
            if not job.state.is_terminal:  # open again, not charged again
                self.book.reopen(job.api_key_id or "anonymous", job.job_id, job.engine.value)

    # Every method is a coroutine: they run on the replica's event loop, one decision at a
    # time, never in a thread pool beside each other.
    async def hit(self, bucket: str, per_minute: int) -> RateState:
        return self.book.hit(bucket, per_minute)

    async def admit(self, bucket: str, job_id: str, engine: str, work: JobWork,
                    quota: KeyQuota, max_open_per_engine: int, metered: bool) -> None:
        self.book.admit(bucket, job_id, engine, work, quota, max_open_per_engine, metered)
        if metered:  # keys off: nothing is charged, so nothing to keep
            usage = json.dumps(self.book.usage()).encode()
            await asyncio.to_thread(self.store.storage.write_bytes, USAGE_KEY, usage)

    async def release(self, bucket: str, job_id: str, engine: str) -> None:
        self.book.release(bucket, job_id, engine)

    async def stored(self, bucket: str, job_id: str, nbytes: int) -> None:
        """A completed job's result is kept: its bytes count until it goes."""
        self.book.stored(bucket, job_id, nbytes)
        await self._save_stored(bucket)

    async def unstored(self, bucket: str, job_id: str) -> None:
        """A job's result was deleted or expired (idempotent)."""
        if self.book.unstored(bucket, job_id):
            await self._save_stored(bucket)

    async def _save_stored(self, bucket: str) -> None:
        data = json.dumps(self.book.stored_of(bucket)).encode()
        await asyncio.to_thread(self.store.storage.write_bytes, stored_key(bucket), data)

    async def figures(self, bucket: str, quota: KeyQuota) -> UsageFigures:
        return self.book.figures(bucket, quota)
