"""The lease side of the job runner (``serve_app.runner``): heart-beating the jobs it drives
(each save renews its lease on the job, see upscaler/job_store.py), stopping one that ended or
was claimed elsewhere, and the periodic sweep that claims jobs whose driver's lease ran out (on
every Ingress replica: the conditional claim lets one win)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from deployments import metrics
from upscaler.job_store import JobStore, LeaseLost
from upscaler.jobs import JobRecord

if TYPE_CHECKING:
    from serve_app.runner_contract import RunnerTimings

logger = logging.getLogger("ray.serve")


class LeaseKeeping:
    """Mixed into JobRunner, whose state and job-driving methods these use."""

    store: JobStore
    timings: RunnerTimings
    owner: str
    _open: dict[str, JobRecord]
    _tasks: dict[str, asyncio.Task]
    _lost: dict[str, JobRecord]
    _stopping: bool

    async def _save(self, job: JobRecord) -> None:
        raise NotImplementedError

    def _start(self, job: JobRecord, data: bytes | None = None) -> asyncio.Task:
        raise NotImplementedError

    async def _ended(self, job: JobRecord) -> None:
        raise NotImplementedError

    def _emit(self, job: JobRecord, event: str | None, send: bool = True) -> None:
        raise NotImplementedError

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
