"""The job runner: drives accepted jobs to their end and keeps their records true.

It submits (stores the upload and the record, starts the engine call), records the engine's
events, heart-beats its open jobs, cancels, resumes resumable jobs (FLUX) after a failure,
takes over jobs whose driver died (the periodic sweep), and hands over or drains its jobs when
its replica stops. The engine call is injected (``run_engine``), so all of this runs, and is
tested, without Ray; in the service it is a streaming DeploymentHandle call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from deployments import metrics
from deployments.ray_compat import unwrap
from upscaler.errors import Conflict, NotFound, UpscalerError
from upscaler.job_store import JobNotFound, JobStore
from upscaler.jobs import (
    Completed,
    Engine,
    JobEvent,
    JobRecord,
    JobSpec,
    JobState,
    Progress,
    Started,
)

logger = logging.getLogger("ray.serve")
# The engine call: the job, and its upload's bytes when they are at hand (a new job's, if
# small) so the replica need not read back what was just stored.
RunEngine = Callable[[JobSpec, bytes | None], AsyncIterator[JobEvent]]
INLINE_UPLOAD_BYTES = 4 * 1024 * 1024
JobEnded = Callable[[JobRecord], Awaitable[None]]
# Told each event of a job as it happens (webhooks): started, progress, completed, failed,
# cancelled. Called on the event loop; it must not block.
JobEventHook = Callable[[JobRecord, str], None]


@dataclass(frozen=True)
class RunnerTimings:
    heartbeat_s: float = 3.0
    stale_after_s: float = 30.0
    drain_s: float = 60.0  # ESRGAN/Imagen jobs' time to finish when the runner stops
    max_resumes: int = 3  # resumable jobs, after a failed engine call
    progress_save_s: float = 0.5  # bounds record writes on object stores


class JobRunner:
    def __init__(self, store: JobStore, run_engine: RunEngine,
                 timings: RunnerTimings = RunnerTimings(), on_ended: JobEnded | None = None,
                 on_event: JobEventHook | None = None):
        self.store = store
        self.on_event = on_event
        self.run_engine = run_engine
        self.timings = timings
        self.on_ended = on_ended  # every job that reaches an end here, once
        self.owner = uuid.uuid4().hex
        self._open: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False
        self._background: asyncio.Task | None = None

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start heart-beating and sweeping (on the running event loop)."""
        for engine in Engine:  # an empty queue is a value too, exported from the start
            self._queue_gauge(engine)
        self._background = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        """The replica is stopping (a rollout, a shutdown); new requests already go to its
        replacement. Resumable jobs are handed over at once, marked stale so the next runner's
        sweep takes them without waiting for the heartbeat to age; the others get
        ``drain_s`` to finish, then are reported failed (worker_lost)."""
        self._stopping = True
        handed_over = [job for job in self._open.values() if job.resumable]
        tasks = [t for job in handed_over if (t := self._tasks.get(job.job_id))]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in handed_over:
            job.heartbeat_at = 0.0
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.save, job)
        plain = list(self._tasks.values())
        if plain:
            logger.info("draining %d job(s) for up to %.0f s", len(plain), self.timings.drain_s)
            _, late = await asyncio.wait(plain, timeout=self.timings.drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._background:
            self._background.cancel()

    # --- requests ------------------------------------------------------------------------
    async def submit(self, job: JobRecord, data: bytes, wait: float) -> JobRecord:
        """Store the upload and the record, start the job, and wait up to ``wait`` seconds
        for it to end (the job goes on when the wait is over)."""
        job.heartbeat_at = time.time()
        await asyncio.to_thread(self._store_new, job, data)
        metrics.count(metrics.jobs_submitted, engine=job.engine.value)
        task = self._start(job, data if len(data) <= INLINE_UPLOAD_BYTES else None)
        del data  # the engine call has what it needs; a long wait need not hold the upload
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        return job

    def _store_new(self, job: JobRecord, data: bytes) -> None:
        self.store.storage.write_bytes(JobStore.input_key(job.job_id), data)
        self.store.save(job)

    async def get(self, job_id: str) -> JobRecord:
        if job_id in self._open:
            return self._open[job_id]
        try:
            return await asyncio.to_thread(self.store.load, job_id)
        except JobNotFound:
            raise NotFound(f"no job with id {job_id}") from None

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.state.is_terminal:
            raise Conflict(f"job {job_id} is already {job.state.value}", code="job_finished")
        task = self._tasks.get(job_id)
        if task is None:
            raise Conflict("this job is run by another ingress replica; retry the request",
                           code="not_owner")
        self._cancel_requested.add(job_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return job

    def is_driving(self, job_id: str) -> bool:
        return job_id in self._open

    def open_count(self, engine: Engine | None = None) -> int:
        return sum(1 for j in self._open.values() if engine is None or j.engine == engine)

    # --- background ----------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        last_sweep = 0.0
        while True:
            if time.monotonic() - last_sweep >= self.timings.stale_after_s / 2:
                last_sweep = time.monotonic()
                await self.sweep()
            await asyncio.sleep(self.timings.heartbeat_s)
            for job in list(self._open.values()):
                if job.job_id not in self._open:  # finished or handed over meanwhile
                    continue
                try:
                    await self._save(job)
                except Exception:  # noqa: BLE001
                    logger.exception("heartbeat for %s failed", job.job_id)

    async def sweep(self) -> None:
        """Take over jobs whose driver stopped heart-beating: resume resumable ones, report
        the others failed (the store's load already saved them so)."""
        if self._stopping:  # a stopping replica takes nothing over
            return
        try:
            for job in await asyncio.to_thread(self.store.abandoned_jobs):
                if job.job_id in self._open:
                    continue
                if job.state == JobState.failed:
                    logger.warning("job %s was abandoned: reported failed", job.job_id)
                    await asyncio.to_thread(self.store.storage.delete,
                                            JobStore.input_key(job.job_id))
                    await self._ended(job)
                elif job.resumable:
                    logger.warning("resuming job %s from its finished tiles", job.job_id)
                    self._start(job)
        except Exception:  # noqa: BLE001
            logger.exception("abandoned-job sweep failed")

    # --- driving one job -----------------------------------------------------------------
    def _start(self, job: JobRecord, data: bytes | None = None) -> asyncio.Task:
        job.owner = self.owner
        self._open[job.job_id] = job
        self._queue_gauge(job.engine)
        task = asyncio.get_running_loop().create_task(self._drive(job, data))
        self._tasks[job.job_id] = task
        return task

    async def _drive(self, job: JobRecord, data: bytes | None) -> None:
        """Run a job to its end. Resumable jobs are re-run (from their finished tiles) when the
        engine call fails for a reason that is not the request's, up to ``max_resumes``."""
        left_open = False
        upload = [data]  # handed to the first engine call only (a rerun reads storage)
        del data
        try:
            while True:
                try:
                    await self._record_events(job, upload.pop() if upload else None)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    cause = unwrap(exc)
                    if (job.resumable and not isinstance(cause, UpscalerError)
                            and job.resumes < self.timings.max_resumes):
                        job.resumes += 1
                        logger.warning("job %s: %s; resuming (%d)", job.job_id,
                                       type(cause).__name__, job.resumes)
                        await self._save(job)
                        continue
                    raise
        except asyncio.CancelledError:
            if job.job_id in self._cancel_requested:
                job.mark_cancelled()
            elif job.resumable:
                left_open = True  # the runner is stopping: the next one resumes this job
            else:
                job.mark_failed("the service stopped before this job finished; submit the "
                                "image again", code="worker_lost")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must end in a failed job
            cause = unwrap(exc)
            if isinstance(cause, UpscalerError):
                job.mark_failed_by(cause)
            else:  # the details are the operator's: in the log, under the job's id
                logger.exception("job %s failed", job.job_id)
                job.mark_failed("the worker failed; the service log has the details under "
                                "this job's id")
        finally:
            if not left_open and not job.state.is_terminal:
                job.mark_failed("the worker ended without a result")
            self._open.pop(job.job_id, None)
            self._tasks.pop(job.job_id, None)
            self._cancel_requested.discard(job.job_id)
            self._queue_gauge(job.engine)
            if not left_open:
                await asyncio.shield(self._finish(job))

    async def _record_events(self, job: JobRecord, data: bytes | None) -> None:
        # Records are written on state changes that matter to readers elsewhere: `processing`
        # waits for the next progress save or heartbeat (a job done before either is written
        # once, completed), progress at most every progress_save_s.
        last_save = time.monotonic()
        async for event in self.run_engine(job.spec(), data):
            if isinstance(event, Started):
                first = job.state == JobState.queued
                job.mark_processing()
                job.stats["replica"] = event.replica
                if first:
                    self._emit(job, "started")
            elif isinstance(event, Progress):
                job.mark_progress(event)
                self._emit(job, "progress")
                if time.monotonic() - last_save > self.timings.progress_save_s:
                    last_save = time.monotonic()
                    await self._save(job)
            elif isinstance(event, Completed):
                job.mark_completed(event)

    async def _finish(self, job: JobRecord) -> None:
        engine = job.engine.value
        metrics.count(metrics.jobs_total, engine=engine, status=job.state.value)
        if job.state == JobState.completed and job.processing_time is not None:
            metrics.observe(metrics.job_seconds, job.processing_time, engine=engine)
        await self._save(job)
        self._emit(job, job.state.value)
        await asyncio.to_thread(self.store.delete_work_files, job.job_id, job.resumable)
        # Bookkeeping (quotas, estimates) after the answer, not before it.
        asyncio.get_running_loop().create_task(self._ended(job))

    async def _ended(self, job: JobRecord) -> None:
        if self.on_ended:
            try:
                await self.on_ended(job)
            except Exception:  # noqa: BLE001 - bookkeeping must not undo the job's end
                logger.exception("after job %s ended", job.job_id)

    def _emit(self, job: JobRecord, event: str) -> None:
        if self.on_event:
            try:
                self.on_event(job, event)
            except Exception:  # noqa: BLE001 - a webhook must not undo the job
                logger.exception("event %s of job %s", event, job.job_id)

    async def _save(self, job: JobRecord) -> None:
        job.heartbeat_at = time.time()
        await asyncio.to_thread(self.store.save, job)

    def _queue_gauge(self, engine: Engine) -> None:
        metrics.set_gauge(metrics.queue_size, self.open_count(engine), engine=engine.value)
