"""The job runner: drives accepted jobs to their end and keeps their records true. The engine
call, how to tell a dead worker and the metrics are injected (``serve_app.runner_contract``), so
it runs, and is tested, without Ray. Design: docs/design/leases.md
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from serve_app.errors import public_error
from serve_app.leases import DEFAULT_TIMINGS, LeaseKeeper, RunnerTimings, adopt
from serve_app.runner_contract import (
    INLINE_UPLOAD_BYTES,
    JobEnded,
    JobMetrics,
    JobWebhooks,
    NoMetrics,
    RunEngine,
    WorkerLost,
    no_worker_lost,
)
from upscaler.domain.job_store import JobNotFound, JobStore, LeaseLost
from upscaler.domain.jobs import (
    END_EVENTS,
    Completed,
    Engine,
    JobRecord,
    JobState,
    Progress,
    Started,
)
from upscaler.domain.storage import StorageError
from upscaler.domain.webhooks import WebhookEvent
from upscaler.errors import Conflict, NotFound, Superseded, UpscalerError, unwrap

logger = logging.getLogger("ray.serve")


class JobRunner:
    def __init__(self, store: JobStore, run_engine: RunEngine,
                 timings: RunnerTimings = DEFAULT_TIMINGS, on_ended: JobEnded | None = None,
                 webhooks: JobWebhooks | None = None,
                 worker_lost: WorkerLost = no_worker_lost,
                 metrics: JobMetrics | None = None):
        self.store = store
        self.webhooks = webhooks
        self.run_engine = run_engine
        self.timings = timings
        self.on_ended = on_ended  # every job that reaches an end here, once
        self.worker_lost = worker_lost
        self.metrics = metrics or NoMetrics()
        self.owner = uuid.uuid4().hex
        self._leases = LeaseKeeper(store, timings, self.owner, self)
        self._open: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_requested: set[str] = set()
        self._changes: dict[str, asyncio.Event] = {}  # woken when that job's record changes
        self._lost: dict[str, JobRecord] = {}  # ended or claimed elsewhere: the stored record
        self._handed_over: list[JobRecord] = []  # left open by a stopping runner
        self._background: asyncio.Task | None = None

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start heart-beating and sweeping (on the running event loop)."""
        for engine in Engine:  # an empty queue is a value too, exported from the start
            self._queue_gauge(engine)
        self._background = asyncio.get_running_loop().create_task(self._leases.keep())

    async def stop(self) -> None:
        """The replica is stopping (a rollout, a shutdown); new requests already go to its
        replacement. Resumable jobs are handed over at once; the others get ``drain_s`` to
        finish, then are handed over too: their leases released, so another runner's sweep
        claims them without waiting for the leases to run out."""
        self._leases.stop_claiming()
        tasks = [t for job in self._open.values()
                 if job.resumable and (t := self._tasks.get(job.job_id))]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        plain = list(self._tasks.values())
        if plain:
            logger.info("draining %d job(s) for up to %.0f s", len(plain), self.timings.drain_s)
            _, late = await asyncio.wait(plain, timeout=self.timings.drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._background:
            self._background.cancel()
        for job in self._handed_over:
            await self._leases.release(job)

    # --- requests ------------------------------------------------------------------------
    async def submit(self, job: JobRecord, data: bytes, wait: float) -> JobRecord:
        """Store the upload and the record, start the job, and wait up to ``wait`` seconds
        for it to end (the job goes on when the wait is over)."""
        job.lease_owner = self.owner
        self._leases.renew(job)
        await asyncio.to_thread(self._store_new, job, data)
        self.metrics.submitted(job.engine.value)
        task = self._start(job, data if len(data) <= INLINE_UPLOAD_BYTES else None)
        del data  # the engine call has what it needs; a long wait need not hold the upload
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        return job

    def _store_new(self, job: JobRecord, data: bytes) -> None:
        self.store.storage.write_bytes(JobStore.input_key(job.job_id), data)
        self.store.create(job)

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
        if task is None:  # driven elsewhere: its driver sees this at its next heartbeat
            return await self._cancel_stored(job_id)
        self._cancel_requested.add(job_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return job

    def drives(self, job_id: str) -> bool:
        """Whether this runner drives the job (its record here is the live one)."""
        return job_id in self._open

    def live(self, job_id: str) -> JobRecord | None:
        """The live record of a job this runner drives, else None."""
        return self._open.get(job_id)

    async def changed(self, job_id: str, timeout: float) -> None:
        """Until the job this runner drives changes (an engine event, its end, saved), or
        ``timeout``: how event streams follow a job here without polling its record."""
        if job_id not in self._open:
            return
        event = self._changes.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _notify(self, job_id: str) -> None:
        if event := self._changes.pop(job_id, None):
            event.set()

    def jobs_ahead(self, job: JobRecord) -> int | None:
        """Open jobs of the same engine this runner took before ``job``; None when another
        replica drives it (this one does not see that queue)."""
        if job.job_id not in self._open:
            return None
        return sum(1 for other in self._open.values()
                   if other.engine == job.engine and other.created_at < job.created_at)

    async def _cancel_stored(self, job_id: str) -> JobRecord:
        def cancelled(stored: JobRecord) -> JobRecord:
            if stored.state.is_terminal:
                raise Conflict(f"job {job_id} is already {stored.state.value}",
                               code="job_finished")
            stored.mark_cancelled()
            self._emit(stored, "cancelled", send=False)  # written with the cancellation
            return stored

        job = await asyncio.to_thread(self.store.update, job_id, cancelled)
        assert job is not None
        self._emit(job, None)
        await asyncio.to_thread(self.store.delete_work_files, job_id, job.resumable)
        await self._ended(job)
        return job

    def open_count(self, engine: Engine | None = None, key_id: str | None = None) -> int:
        """Open jobs (of one engine, of one key's when given)."""
        return sum(1 for j in self._open.values() if (engine is None or j.engine == engine)
                   and (key_id is None or j.api_key_id == key_id))

    # --- driving one job -----------------------------------------------------------------
    def _start(self, job: JobRecord, data: bytes | None = None) -> asyncio.Task:
        job.lease_owner = self.owner
        self._open[job.job_id] = job
        self._queue_gauge(job.engine)
        task = asyncio.get_running_loop().create_task(self._drive(job, data))
        self._tasks[job.job_id] = task
        return task

    async def _drive(self, job: JobRecord, data: bytes | None) -> None:
        """Run a job to its end. Resumable jobs are re-run (from their finished tiles) when the
        engine call fails for a reason that is not the request's, up to ``max_resumes``; the
        others when the replica running it died, up to ``max_attempts`` runs."""
        left_open = False
        upload = [data]  # handed to the first engine call only (a rerun reads storage)
        del data
        try:
            while True:
                try:
                    await self._record_events(job, upload.pop() if upload else None)
                    break
                except (asyncio.CancelledError, LeaseLost):
                    raise
                except Exception as exc:
                    cause = unwrap(exc)
                    if isinstance(cause, Superseded):  # the engine saw the job move on: as
                        # a refused save, the stored record is the truth; nothing is written
                        raise LeaseLost(await asyncio.to_thread(self.store.load, job.job_id)
                                        ) from exc
                    if isinstance(cause, StorageError) and \
                            job.attempts < self.timings.max_attempts:
                        # The engine could not reach job storage (its input, or its result
                        # after a lease's length of retries): not the job's fault. Handed to
                        # the sweep, which runs it again once storage answers.
                        raise _StorageOutage() from exc
                    if isinstance(cause, UpscalerError):
                        raise
                    if job.resumable and job.resumes < self.timings.max_resumes:
                        job.resumes += 1
                    elif self.worker_lost(exc) and job.attempts < self.timings.max_attempts:
                        job.attempts += 1
                    else:
                        raise
                    logger.warning("job %s: %s; running it again (resumes %d, attempt %d)",
                                   job.job_id, type(cause).__name__, job.resumes, job.attempts)
                    await self._leases.save(job)
        except LeaseLost as lost:
            self._lost[job.job_id] = lost.record
            left_open = True  # not this runner's job any more: nothing to write
        except _StorageOutage:
            logger.warning("job %s: job storage is not answering; the job runs again when "
                           "it does", job.job_id)
            left_open = True
            self._open.pop(job.job_id, None)  # no heartbeat may renew what is released
            await self._leases.release(job)
        except asyncio.CancelledError:
            if job.job_id in self._lost:
                left_open = True
            elif job.job_id in self._cancel_requested:
                job.mark_cancelled()
            else:  # the runner is stopping: another runner re-runs or resumes this job
                left_open = True
                self._handed_over.append(job)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must end in a failed job
            cause = unwrap(exc)
            if isinstance(cause, UpscalerError):  # a 5xx's details to the log, not the record
                job.mark_failed_by(public_error(cause, job.job_id))
            elif self.worker_lost(exc):
                job.mark_failed(f"the replica running this job died {job.attempts} time(s) "
                                "before it finished; submit the image again",
                                code="worker_lost")
            else:  # the details are the operator's: in the log, under the job's id
                logger.exception("job %s failed", job.job_id)
                job.mark_failed("the worker failed; the service log has the details under "
                                "this job's id")
        finally:
            if not left_open and not job.state.is_terminal:
                job.mark_failed("the worker ended without a result")
            self._tasks.pop(job.job_id, None)
            self._cancel_requested.discard(job.job_id)
            if (stored := self._lost.pop(job.job_id, None)) is not None:
                adopt(job, stored)  # what waiters on this record see: the stored truth
            try:
                # Until its end is stored, readers here get this record, not the stored
                # one, which may still say processing.
                if not left_open:
                    await asyncio.shield(self._finish(job))
            finally:
                self._open.pop(job.job_id, None)
                self._queue_gauge(job.engine)

    async def _record_events(self, job: JobRecord, data: bytes | None) -> None:
        # Records are written on state changes that matter to readers elsewhere: `processing`
        # waits for the next progress save or heartbeat (a job done before either is written
        # once, completed), progress at most every progress_save_s.
        last_save = time.monotonic()
        stream = self.run_engine(job.spec(), data)
        try:
            async for event in stream:
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
                        await self._leases.save_progress(job)
                elif isinstance(event, Completed):
                    job.mark_completed(event)
                self._notify(job.job_id)
        except BaseException:  # a save refused (LeaseLost), cancelled: stop the engine too
            if close := getattr(stream, "aclose", None):
                with contextlib.suppress(Exception):
                    await close()
            elif cancel := getattr(stream, "cancel", None):  # a Serve response stream
                cancel()
            raise

    async def _finish(self, job: JobRecord) -> None:
        self._count_end(job)
        self._emit(job, END_EVENTS[job.state], send=False)  # stored with its end, then sent
        saved = await self._leases.save_final(job)
        self._notify(job.job_id)  # its end (or the stored one), for every reader
        if not saved:  # ended elsewhere: the stored record (adopted) has its own deliveries
            return
        self._emit(job, None)
        try:
            await asyncio.to_thread(self.store.delete_work_files, job.job_id, job.resumable)
        except Exception:  # noqa: BLE001 - storage down: a sweep deletes an ended job's upload
            logger.warning("job %s: its upload and work files are left for a sweep", job.job_id)
        # Bookkeeping (quotas, estimates) after the answer, not before it.
        asyncio.get_running_loop().create_task(self._ended(job))

    async def _ended(self, job: JobRecord) -> None:
        if self.on_ended:
            try:
                await self.on_ended(job)
            except Exception:  # noqa: BLE001 - bookkeeping must not undo the job's end
                logger.exception("after job %s ended", job.job_id)

    def _emit(self, job: JobRecord, event: WebhookEvent | None, send: bool = True) -> None:
        """Record an event's webhook delivery (None: none) and, with ``send``, send the
        job's pending ones."""
        if self.webhooks:
            try:
                if event is not None:
                    self.webhooks.record(job, event)
                if send:
                    self.webhooks.send_pending(job)
            except Exception:  # noqa: BLE001 - a webhook must not undo the job
                logger.exception("event %s of job %s", event, job.job_id)

    def _count_end(self, job: JobRecord) -> None:
        seconds = job.processing_time if job.state == JobState.completed else None
        self.metrics.ended(job.engine.value, job.state.value, seconds)

    def _queue_gauge(self, engine: Engine) -> None:
        self.metrics.open_jobs(engine.value, self.open_count(engine))

    # --- the lease keeper's calls (serve_app.leases.LeasedJobs) ---------------------------
    def open_jobs(self) -> list[JobRecord]:
        return list(self._open.values())

    def lose(self, job: JobRecord, stored: JobRecord) -> None:
        """The job ended elsewhere (cancelled through another replica) or another runner
        claimed it (this one was cut off for a lease's length): stop driving it, write
        nothing."""
        logger.warning("job %s is %s elsewhere; stopping here", job.job_id,
                       stored.state.value if stored.state.is_terminal else "driven")
        if task := self._tasks.get(job.job_id):  # else it has just finished here
            self._lost[job.job_id] = stored
            task.cancel()

    def take_over(self, job: JobRecord) -> None:
        self._start(job)
        self._emit(job, None)  # the webhook deliveries its driver left pending

    async def give_up(self, job: JobRecord) -> None:
        self._count_end(job)
        await asyncio.to_thread(self.store.delete_work_files, job.job_id, job.resumable)
        await self._ended(job)


class _StorageOutage(Exception):
    """An engine call failed because job storage could not be reached."""
