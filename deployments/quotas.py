"""The quota keeper: one replica that holds every key's counters, so rate limits and quotas
hold across any number of Ingress replicas.

Why a replica and not the job store: every request asks it (a token per request), and a Serve
replica answers in about a millisecond, one call at a time, so no decision is made on a stale
count. Counting in the store would be a conditional write per request on a bucket (tens of ms,
retries under contention). What must outlive the replica is kept in the store: the day's
megapixels per key are written there as they change, and open jobs are counted again from the
open job records when the replica starts.
"""

from __future__ import annotations

import asyncio
import json
import logging

from ray import serve

from upscaler.job_store import JobStore
from upscaler.quotas import KeyQuota, QuotaBook, RateState
from upscaler.settings import Settings

logger = logging.getLogger("ray.serve")
USAGE_KEY = "quotas/usage.json"


@serve.deployment(name="Quotas")
class QuotaKeeper:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = JobStore.from_settings(settings)
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
        for job_id in self.store.open_job_ids():
            try:
                job = self.store.load(job_id)
            except Exception:  # noqa: BLE001 - a record being written or gone: skip it
                continue
            if not job.state.is_terminal:
                self.book.admit(job.api_key_id or "anonymous", job.job_id, job.engine.value,
                                0.0, KeyQuota(1, 1, 1.0), 1 << 30, metered=False)

    # Every method is a coroutine: they run on the replica's event loop, one decision at a
    # time, never in a thread pool beside each other.
    async def hit(self, bucket: str, per_minute: int) -> RateState:
        return self.book.hit(bucket, per_minute)

    async def admit(self, bucket: str, job_id: str, engine: str, output_mp: float,
                    quota: KeyQuota, max_open_per_engine: int, metered: bool) -> None:
        self.book.admit(bucket, job_id, engine, output_mp, quota, max_open_per_engine, metered)
        if metered:
            usage = json.dumps(self.book.usage()).encode()
            await asyncio.to_thread(self.store.storage.write_bytes, USAGE_KEY, usage)

    async def release(self, bucket: str, job_id: str, engine: str) -> None:
        self.book.release(bucket, job_id, engine)
