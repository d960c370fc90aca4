"""The job runner without Ray, continued: heartbeats, hand-over on stop, the drain, the stale
sweep, take-over of a dead runner's jobs, and jobs whose replica or storage went away."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers.runner import (
    FAST,
    FakeEngine,
    SlowHeartbeats,
    fast_store,
    new_job,
    run,
    started,
    until,
)

from serve_app.runner import JobRunner, RunnerTimings
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import Completed, Engine, JobState


@pytest.fixture
def store(tmp_path) -> JobStore:
    return fast_store(tmp_path)


def test_heartbeat_keeps_open_jobs_fresh(store):
    async def main():
        runner = started(store, FakeEngine(steps=50, step_s=0.02))
        job = await runner.submit(new_job(), b"upload", wait=0)
        await asyncio.sleep(FAST.stale_after_s * 2)
        saved = store.load(job.job_id)  # not stale: the load does not fail it
        assert saved.state == JobState.processing
        assert time.time() - saved.heartbeat_at < FAST.stale_after_s
        await runner.cancel(job.job_id)
        await runner.stop()

    run(main())


def test_stop_hands_resumable_jobs_over_and_drains_the_others(store):
    async def main():
        slow = FakeEngine(steps=1000, step_s=0.01)
        runner = started(store, slow)
        flux = await runner.submit(new_job(Engine.flux), b"upload", wait=0)
        short = JobRunner(store, FakeEngine(steps=5, step_s=0.02).run, FAST)
        short.start()
        finishing = await short.submit(new_job(Engine.esrgan), b"upload", wait=0)
        long = await runner.submit(new_job(Engine.esrgan), b"upload", wait=0)
        await until(lambda: flux.state == JobState.processing)
        await asyncio.gather(runner.stop(), short.stop())
        # FLUX: left open for the next runner, marked stale at once.
        handed = store.load(flux.job_id)
        assert handed.state == JobState.processing and handed.heartbeat_at == 0.0
        assert store.storage.exists(JobStore.input_key(flux.job_id))
        # ESRGAN: finished within the drain, or handed over after it (its lease released).
        assert store.load(finishing.job_id).state == JobState.completed
        handed_plain = store.load(long.job_id)
        assert handed_plain.state == JobState.processing and handed_plain.lease_expires_at == 0
        assert store.storage.exists(JobStore.input_key(long.job_id))

        # The next runner's sweep resumes the FLUX job and runs the ESRGAN one again.
        engine = FakeEngine()
        successor = started(store, engine)
        for job in (flux, long):
            await until(lambda job=job: store.load(job.job_id).state == JobState.completed)
            assert store.load(job.job_id).attempts == 2
        assert sorted(engine.calls) == sorted([flux.job_id, long.job_id])
        await successor.stop()

    run(main())


def test_sweep_takes_over_jobs_whose_driver_died(store):
    async def main():
        dead = {engine: new_job(engine) for engine in (Engine.esrgan, Engine.flux)}
        for job in dead.values():  # written by a runner that died: heartbeat long ago
            job.lease_owner, job.heartbeat_at = "dead-runner", time.time() - 60
            job.mark_processing()
            store.storage.write_bytes(JobStore.input_key(job.job_id), b"upload")
            store.save(job)
        finished = new_job()
        finished.mark_completed(Completed("results/x.png", "x.png"))
        store.save(finished)
        engine = FakeEngine()
        runner = started(store, engine)
        esrgan_id, flux_id = dead[Engine.esrgan].job_id, dead[Engine.flux].job_id
        await until(lambda: store.load(flux_id).state == JobState.completed)
        await until(lambda: store.load(esrgan_id).state == JobState.completed)
        rerun = store.load(esrgan_id)  # re-run from its stored input
        assert rerun.attempts == 2 and rerun.lease_owner == runner.owner
        await until(lambda: not store.storage.exists(JobStore.input_key(esrgan_id)))
        assert sorted(engine.calls) == sorted([esrgan_id, flux_id])
        assert engine.uploads == [None, None]  # read from storage by the engine
        assert store.load(finished.job_id).state == JobState.completed
        await runner.stop()

    run(main())


def test_a_late_heartbeat_never_overwrites_the_end(tmp_path):
    """The lost-update race: a heartbeat saying `processing` written after `completed` once
    turned a finished job into a running one, then `worker_lost`."""
    async def main():
        storage = SlowHeartbeats(str(tmp_path / "storage"), delay_s=FAST.stale_after_s)
        store = JobStore(storage, stale_after_s=FAST.stale_after_s)
        timings = RunnerTimings(heartbeat_s=0.02, stale_after_s=0.3, progress_save_s=60)
        runner = JobRunner(store, FakeEngine(steps=10, step_s=0.02).run, timings)
        runner.start()
        job = await runner.submit(new_job(), b"upload", wait=5)
        assert job.state == JobState.completed and storage.delayed >= 1
        await asyncio.sleep(timings.stale_after_s * 2)  # the late write, then a sweep or two
        assert store.load(job.job_id).state == JobState.completed
        await runner.stop()

    run(main())


class WorkerGone(Exception):
    """An engine call whose process died (Ray's RayActorError, in the service)."""


def test_a_job_whose_replica_died_runs_again_up_to_max_attempts(store):
    def gone(exc: BaseException) -> bool:
        return isinstance(exc, WorkerGone)

    async def main():
        runner = started(store, FakeEngine(fail=[WorkerGone()]), worker_lost=gone)
        job = await runner.submit(new_job(Engine.imagen), b"upload", wait=5)
        assert job.state == JobState.completed and job.attempts == 2
        runner2 = started(store, FakeEngine(fail=[WorkerGone()] * FAST.max_attempts),
                          worker_lost=gone)
        job = await runner2.submit(new_job(Engine.esrgan), b"upload", wait=5)
        assert job.state == JobState.failed and job.error_code == "worker_lost"
        assert store.load(job.job_id).attempts == FAST.max_attempts
        await asyncio.gather(runner.stop(), runner2.stop())

    run(main())


def test_two_runners_take_over_a_dead_runners_jobs_each_once(store):
    """Two Ingress replicas over one storage: the jobs of a third that died are claimed by
    one of them each (conditional claims), run once, and none is left behind."""
    # Leases long enough that a loaded machine's slow writes do not let one run out under
    # a live driver (which would be a take-over, rightly).
    timings = RunnerTimings(heartbeat_s=0.05, stale_after_s=1.5, progress_save_s=0.0)
    store = JobStore(store.storage, stale_after_s=timings.stale_after_s)

    def started(store: JobStore, engine: FakeEngine) -> JobRunner:
        runner = JobRunner(store, engine.run, timings)
        runner.start()
        return runner

    async def main():
        dead = started(store, FakeEngine(steps=10_000, step_s=0.01))
        jobs = [await dead.submit(new_job(engine), b"upload", wait=0)
                for engine in (Engine.esrgan, Engine.imagen, Engine.flux) for _ in range(4)]
        await until(lambda: all(job.state == JobState.processing for job in jobs))
        dead._background.cancel()  # it dies: no stop(), no more writes
        for task in list(dead._tasks.values()):
            task.cancel()
        engine = FakeEngine(steps=3, step_s=0.02)  # one engine, counting every call
        survivors = [started(store, engine), started(store, engine)]
        for job in jobs:
            await until(lambda job=job: store.load(job.job_id).state == JobState.completed)
        assert sorted(engine.calls) == sorted(job.job_id for job in jobs)  # each once
        owners = {store.load(job.job_id).lease_owner for job in jobs}
        assert owners <= {r.owner for r in survivors}
        assert all(store.load(job.job_id).attempts == 2 for job in jobs)
        await until(lambda: store.open_job_ids() == [])  # uploads kept until the end only
        await asyncio.gather(*(r.stop() for r in survivors))

    run(main())


def test_a_job_whose_engine_cannot_reach_storage_runs_again_when_it_can(store):
    """An engine call that failed for want of job storage (its result unwritable for a
    lease's length) does not fail the job: its lease is released and a sweep runs it again;
    when its attempts are spent it fails with the storage error's reason."""
    from upscaler.domain.storage import StorageError

    async def main():
        engine = FakeEngine(fail=[StorageError("job storage is not answering")])
        runner = started(store, engine)
        job = await runner.submit(new_job(), b"upload", wait=0)
        await until(lambda: store.load(job.job_id).state == JobState.completed)
        assert store.load(job.job_id).attempts == 2 and engine.calls == [job.job_id] * 2
        await runner.stop()  # the next job's sweeps are the next runner's alone
        down = FakeEngine(fail=[StorageError("job storage is not answering", retry_after=5)]
                          * FAST.max_attempts)
        runner2 = started(store, down)
        job = await runner2.submit(new_job(), b"upload", wait=0)
        await until(lambda: store.load(job.job_id).state == JobState.failed)
        failed = store.load(job.job_id)
        assert failed.error_code == "storage_unavailable" and failed.error_status == 503
        assert failed.attempts == FAST.max_attempts == len(down.calls)
        await runner2.stop()

    run(main())
