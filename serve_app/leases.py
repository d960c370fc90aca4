"""The leases of a job runner's open jobs: heartbeats, lease-checked saves, and the sweep that
takes over jobs whose driver is gone. ``JobRunner`` owns one ``LeaseKeeper``.
Design: docs/design/leases.md
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from upscaler.domain.job_store import JobStore, LeaseLost
from upscaler.domain.jobs import JobRecord

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


class LeasedJobs(Protocol):
    """What the keeper asks of the runner whose jobs it keeps (``JobRunner``)."""

    def open_jobs(self) -> list[JobRecord]: ...

    def drives(self, job_id: str) -> bool: ...

    def lose(self, job: JobRecord, stored: JobRecord) -> None:
        """Stop driving ``job`` without writing: ``stored`` (ended, or claimed) is the truth."""

    def take_over(self, job: JobRecord) -> None:
        """Drive ``job``, claimed by the sweep from a driver that is gone."""

    async def give_up(self, job: JobRecord) -> None:
        """``job``, claimed with its attempts spent, failed and stored so: its end's work."""


class LeaseKeeper:
    """Heart-beats, the sweep, and the lease-checked saves of one runner's (``owner``) jobs."""

    def __init__(self, store: JobStore, timings: RunnerTimings, owner: str, jobs: LeasedJobs):
        self.store = store
        self.timings = timings
        self.owner = owner
        self._jobs = jobs
        self._claiming = True

    def stop_claiming(self) -> None:
        """The runner is stopping: it takes no job over (heartbeats go on while it drains)."""
        self._claiming = False

    async def keep(self) -> None:
        """Heart-beat the open jobs and sweep, until cancelled."""
        last_sweep = 0.0
        while True:
            if time.monotonic() - last_sweep >= self.timings.stale_after_s / 2:
                last_sweep = time.monotonic()
                await self.sweep()
            await asyncio.sleep(self.timings.heartbeat_s)
            for job in self._jobs.open_jobs():
                # An ending job's final save is under way; a heartbeat could only race it.
                if not self._jobs.drives(job.job_id) or job.state.is_terminal:
                    continue
                try:
                    await self.save(job)
                except LeaseLost as lost:
                    self._jobs.lose(job, lost.record)
                except Exception:  # noqa: BLE001 - storage down: the next beat tries again
                    logger.exception("heartbeat for %s failed", job.job_id)

    async def sweep(self) -> None:
        """Claim jobs whose driver's lease ran out: re-run them (from their tiles: FLUX), or
        fail them with the reason when their attempts are spent. Each claim is a conditional
        write, so of several runners sweeping at once one takes a job, once."""
        if not self._claiming:  # a stopping replica takes nothing over
            return
        try:
            expired = await asyncio.to_thread(self.store.expired_jobs)
        except Exception:  # noqa: BLE001 - storage down: the next sweep tries again
            logger.exception("sweep failed")
            return
        for found in expired:
            if self._jobs.drives(found.job_id) or not self._claiming:
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
                await self._jobs.give_up(job)
            else:
                logger.warning("job %s: its driver stopped; %s (attempt %d)", job.job_id,
                               "resuming from its tiles" if job.resumable
                               else "running it again from its stored input", job.attempts)
                self._jobs.take_over(job)

    # --- the driver's saves --------------------------------------------------------------
    def renew(self, job: JobRecord) -> None:
        job.heartbeat_at = time.time()
        job.lease_expires_at = job.heartbeat_at + self.timings.stale_after_s

    async def save(self, job: JobRecord) -> None:
        """Save with the lease renewed; ``LeaseLost`` when the job is not this driver's."""
        self.renew(job)
        await asyncio.to_thread(self.store.save, job)

    async def save_final(self, job: JobRecord) -> bool:
        """Save a job's end, retrying while storage is down for up to a lease's length (then
        the lease runs out and a sweep runs the job again). False: it ended elsewhere."""
        deadline = time.monotonic() + self.timings.stale_after_s
        delay = 0.05
        while True:
            try:
                await self.save(job)
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

    async def save_progress(self, job: JobRecord) -> None:
        """A save the job does not depend on: when storage is down it waits for the next
        progress or heartbeat (a refused one still stops the driver)."""
        try:
            await self.save(job)
        except LeaseLost:
            raise
        except Exception:  # noqa: BLE001
            logger.warning("job %s: saving its progress failed; the next save tries again",
                           job.job_id)

    async def release(self, job: JobRecord) -> None:
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


def adopt(job: JobRecord, stored: JobRecord) -> None:
    """Make the driver's copy the stored truth (what waiters on it then see)."""
    for name in type(stored).model_fields:
        setattr(job, name, getattr(stored, name))
