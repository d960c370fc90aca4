"""The lease side of the job runner (``serve_app.runner.JobRunner`` mixes this in): what keeps
a driver's claim on its jobs true and takes over jobs whose driver is gone.

Each open job's record carries its driver's lease (upscaler/job_store.py). The driver renews it
with every save (heartbeats, progress, the end); a save is refused (``LeaseLost``) once another
runner holds the lease or the job ended elsewhere, and the driver then stops, writing nothing
more. The periodic sweep, on every Ingress replica, claims jobs whose lease ran out, one more
attempt each (the conditional claim lets one runner win); the engine call of the attempt it
replaces stops by itself when it sees the newer attempt (deployments/fencing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from deployments import metrics
from upscaler.job_store import JobStore, LeaseLost
from upscaler.jobs import JobRecord
from upscaler.webhooks import WebhookEvent

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class RunnerTimings:
    heartbeat_s: float = 3.0
    stale_after_s: float = 30.0
    drain_s: float = 60.0  # ESRGAN/Imagen jobs' time to finish when the runner stops
    max_resumes: int = 3  # resumable jobs, after a failed engine call
    max_attempts: int = 3  # runs of a job whose driver or replica died under it
    progress_save_s: float = 0.5  # bounds record writes on object stores


DEFAULT_TIMINGS = RunnerTimings()


class LeaseKeeping:
    """Heart-beats, the sweep, and the driver's lease-checked saves. The runner's state it
    works on is declared here; ``JobRunner`` provides it and the two hooks below."""

    store: JobStore
    timings: RunnerTimings
    owner: str
    _open: dict[str, JobRecord]
    _tasks: dict[str, asyncio.Task]
    _lost: dict[str, JobRecord]
    _stopping: bool

    def _start(self, job: JobRecord, data: bytes | None = None) -> asyncio.Task:
        raise NotImplementedError

    async def _ended(self, job: JobRecord) -> None:
        raise NotImplementedError

    def _emit(self, job: JobRecord, event: WebhookEvent | None, send: bool = True) -> None:
        raise NotImplementedError

    # --- background ----------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        last_sweep = 0.0
        while True:
            if time.monotonic() - last_sweep >= self.timings.stale_after_s / 2:
                last_sweep = time.monotonic()
                await self.sweep()
            await asyncio.sleep(self.timings.heartbeat_s)
            for job in list(self._open.values()):
                if job.job_id not in self._open or job.state.is_terminal:  # ending: saved so
                    continue
                try:
                    await self._save(job)
                except LeaseLost as lost:
                    self._lose(job, lost.record)
                except Exception:  # noqa: BLE001 - storage down: the next beat tries again
                    logger.exception("heartbeat for %s failed", job.job_id)

    def _lose(self, job: JobRecord, stored: JobRecord) -> None:
        """The job ended elsewhere (cancelled through another replica) or another runner
        claimed it (this one was cut off for a lease's length): stop driving it, write
        nothing."""
        logger.warning("job %s is %s elsewhere; stopping here", job.job_id,
                       stored.state.value if stored.state.is_terminal else "driven")
        if task := self._tasks.get(job.job_id):  # else it has just finished here
            self._lost[job.job_id] = stored
            task.cancel()

    async def sweep(self) -> None:
        """Claim jobs whose driver's lease ran out: re-run them (from their tiles: FLUX), or
        fail them with the reason when their attempts are spent. Each claim is a conditional
        write, so of several runners sweeping at once one takes a job, once."""
        if self._stopping:  # a stopping replica takes nothing over
            return
        try:
            expired = await asyncio.to_thread(self.store.expired_jobs)
        except Exception:  # noqa: BLE001 - storage down: the next sweep tries again
            logger.exception("sweep failed")
            return
        for found in expired:
            if found.job_id in self._open or self._stopping:
                continue
            try:
                job = await asyncio.to_thread(self.store.claim, found.job_id, self.owner,
                                              self.timings.max_attempts)
            except Exception:  # noqa: BLE001
                logger.exception("claiming job %s failed", found.job_id)
                continue
            if job is None:  # renewed, ended, or claimed by another runner first
                continue
            if job.state.is_terminal:
                logger.warning("job %s: attempts spent; failed", job.job_id)
                metrics.count(metrics.jobs_total, engine=job.engine.value, status=job.state.value)
                await asyncio.to_thread(self.store.delete_work_files, job.job_id, job.resumable)
                await self._ended(job)
            else:
                logger.warning("job %s: its driver stopped; %s (attempt %d)", job.job_id,
                               "resuming from its tiles" if job.resumable
                               else "running it again from its stored input", job.attempts)
                self._start(job)
                self._emit(job, None)  # the webhook deliveries its driver left pending

    async def _save_final(self, job: JobRecord) -> bool:
        """Save a job's end, retrying while storage is down for up to a lease's length (then
        the lease runs out and a sweep runs the job again). False: it ended elsewhere."""
        deadline = time.monotonic() + self.timings.stale_after_s
        delay = 0.05
        while True:
            try:
                await self._save(job)
                return True
            except LeaseLost as lost:
                adopt(job, lost.record)
                return False
            except Exception:
                if time.monotonic() > deadline:
                    raise
                logger.warning("job %s: saving its end failed; retrying", job.job_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _release(self, job: JobRecord) -> None:
        """Hand an open job to the sweep (any runner's, this one's too): its lease ends now,
        so it is claimed at the next sweep rather than a lease later. When storage cannot
        take that, the lease runs out by itself."""
        job.heartbeat_at, job.lease_expires_at = 0.0, 0.0
        try:
            await asyncio.to_thread(self.store.save, job)
        except LeaseLost:  # claimed already (storage answered again): a newer attempt runs it
            pass
        except Exception:  # noqa: BLE001
            logger.warning("job %s: its lease could not be released; it runs out",
                           job.job_id)

    async def _save_progress(self, job: JobRecord) -> None:
        """A save the job does not depend on: when storage is down it waits for the next
        progress or heartbeat (a refused one still stops the driver)."""
        try:
            await self._save(job)
        except LeaseLost:
            raise
        except Exception:  # noqa: BLE001
            logger.warning("job %s: saving its progress failed; the next save tries again",
                           job.job_id)

    def _renew(self, job: JobRecord) -> None:
        job.heartbeat_at = time.time()
        job.lease_expires_at = job.heartbeat_at + self.timings.stale_after_s

    async def _save(self, job: JobRecord) -> None:
        self._renew(job)
        await asyncio.to_thread(self.store.save, job)

def adopt(job: JobRecord, stored: JobRecord) -> None:
    """Make the driver's copy the stored truth (what waiters on it then see)."""
    for name in type(stored).model_fields:
        setattr(job, name, getattr(stored, name))
