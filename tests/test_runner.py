"""The job runner without Ray: fake engine calls, a real job store on a local folder, timings
in milliseconds. Submit, wait, cancel, failures, resume, hand-over, drain, the stale sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from serve_app.engine_specs import initial_rates
from serve_app.estimates import Estimator
from serve_app.runner import JobRunner, RunnerTimings
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.domain.job_stats import ImagenStats
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import (
    Completed,
    Engine,
    EsrganParams,
    FluxParams,
    ImagenParams,
    JobRecord,
    JobSpec,
    JobState,
    Progress,
    Size,
    Started,
)
from upscaler.domain.storage import Storage
from upscaler.errors import Conflict, NotFound, RateLimited

FAST = RunnerTimings(heartbeat_s=0.02, stale_after_s=0.3, drain_s=0.5, max_resumes=2,
                     progress_save_s=0.0)
PARAMS = {Engine.esrgan: EsrganParams(model="m"), Engine.flux: FluxParams(upscale_model="m"),
          Engine.imagen: ImagenParams(model="imagen-4.0-upscale-preview", factor=2,
                                      gcp_project_id="project", gcp_region="us-central1")}


def new_job(engine: Engine = Engine.esrgan) -> JobRecord:
    return JobRecord(engine=engine, params=PARAMS[engine], input_format="PNG",
                     plan=calculate_output_dimensions(8, 8, 4), input_size=Size(width=8, height=8),
                     output_size=Size(width=32, height=32))


FAKE_STATS = ImagenStats(model="fake", vertex_factor=2, vertex_output=[8, 8],
                         vertex_seconds=0.0, device="fake")


class FakeEngine:
    """Engine calls as the deployments stream them; each job's script says what happens."""

    def __init__(self, steps: int = 3, step_s: float = 0.01,
                 fail: list[BaseException] | None = None):
        self.steps, self.step_s = steps, step_s
        self.fail = list(fail or [])  # raised by the next calls, one each
        self.calls: list[str] = []
        self.uploads: list[bytes | None] = []
        self.cancelled: list[str] = []

    async def run(self, spec: JobSpec, data: bytes | None = None) -> AsyncIterator:
        self.calls.append(spec.job_id)
        self.uploads.append(data)
        try:
            yield Started("fake-replica")
            for done in range(1, self.steps + 1):
                await asyncio.sleep(self.step_s)
                if self.fail:
                    raise self.fail.pop(0)
                yield Progress(done, self.steps)
            yield Completed(JobStore.result_key(spec.result_filename), spec.result_filename,
                            FAKE_STATS)
        except (asyncio.CancelledError, GeneratorExit):  # the call cancelled, or its stream
            self.cancelled.append(spec.job_id)
            raise


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(Storage(str(tmp_path / "storage")), stale_after_s=FAST.stale_after_s)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def started(store: JobStore, engine: FakeEngine, **kwargs) -> JobRunner:
    runner = JobRunner(store, engine.run, FAST, **kwargs)
    runner.start()
    return runner


def test_submit_waits_records_and_cleans_up(store):
    async def main():
        ended = []

        async def on_ended(job):
            ended.append(job)

        runner = started(store, FakeEngine(), on_ended=on_ended)
        job = await runner.submit(new_job(), b"upload", wait=5)
        assert job.state == JobState.completed and job.progress == 100
        assert job.stats == FAKE_STATS.as_json() and job.result_filename == f"{job.job_id}.png"
        assert job.processing_time is not None
        await until(lambda: ended == [job])  # bookkeeping runs after the answer
        saved = store.load(job.job_id)
        assert saved.state == JobState.completed and saved.lease_owner == runner.owner
        assert not store.storage.exists(JobStore.input_key(job.job_id))  # upload deleted
        assert runner.open_count() == 0
        await runner.stop()

    run(main())


def test_no_wait_answers_queued_and_the_job_goes_on(store):
    async def main():
        runner = started(store, FakeEngine(step_s=0.05))
        job = await runner.submit(new_job(), b"upload", wait=0)
        assert job.state == JobState.queued and runner.open_count(Engine.esrgan) == 1
        assert store.storage.read_bytes(JobStore.input_key(job.job_id)) == b"upload"
        await until(lambda: job.state == JobState.completed)
        assert (await runner.get(job.job_id)).state == JobState.completed
        await runner.stop()

    run(main())


def test_cancel(store):
    async def main():
        engine = FakeEngine(steps=100, step_s=0.02)
        runner = started(store, engine)
        job = await runner.submit(new_job(), b"upload", wait=0)
        await until(lambda: job.state == JobState.processing)
        cancelled = await runner.cancel(job.job_id)
        assert cancelled.state == JobState.cancelled and engine.cancelled == [job.job_id]
        assert store.load(job.job_id).state == JobState.cancelled
        with pytest.raises(Conflict) as err:
            await runner.cancel(job.job_id)
        assert err.value.code == "job_finished" and err.value.http_status == 409
        with pytest.raises(NotFound):
            await runner.cancel("0" * 32)
        # Driven by another runner: cancelled in the record; the driver stops at its next
        # heartbeat, writing nothing more.
        other_engine = FakeEngine(steps=1000, step_s=0.01)
        other_runner = started(store, other_engine)
        other = await other_runner.submit(new_job(), b"upload", wait=0)
        await until(lambda: other.state == JobState.processing)
        assert (await runner.cancel(other.job_id)).state == JobState.cancelled
        await until(lambda: other_engine.cancelled == [other.job_id])
        assert other.state == JobState.cancelled  # its driver's copy follows the record
        assert store.load(other.job_id).state == JobState.cancelled
        assert not store.storage.exists(JobStore.input_key(other.job_id))
        await runner.stop()
        await other_runner.stop()

    run(main())


def test_request_errors_fail_the_job_with_their_code(store):
    async def main():
        runner = started(store, FakeEngine(fail=[RateLimited("slow down", code="quota_exhausted",
                                                             retry_after=60)]))
        job = await runner.submit(new_job(Engine.imagen), b"upload", wait=5)
        assert job.state == JobState.failed and job.error_code == "quota_exhausted"
        assert job.error_status == 429 and job.retry_after == 60 and job.error == "slow down"
        runner2 = started(store, FakeEngine(fail=[RuntimeError("boom")]))
        job = await runner2.submit(new_job(), b"upload", wait=5)
        assert job.state == JobState.failed and job.error_code == "processing_failed"
        assert job.error_status is None
        await runner.stop()
        await runner2.stop()

    run(main())


@pytest.mark.parametrize("failures,state,resumes", [
    ([RuntimeError("replica died")], JobState.completed, 1),
    ([RuntimeError("1"), RuntimeError("2")], JobState.completed, 2),
    ([RuntimeError("1"), RuntimeError("2"), RuntimeError("3")], JobState.failed, 2),
    ([RateLimited("a request error is final")], JobState.failed, 0),
])
def test_resumable_jobs_are_rerun_a_bounded_number_of_times(store, failures, state, resumes):
    async def main():
        engine = FakeEngine(fail=failures)
        runner = started(store, engine)
        job = await runner.submit(new_job(Engine.flux), b"upload", wait=5)
        assert job.state == state and job.resumes == resumes
        assert len(engine.calls) == resumes + 1
        # The upload goes along with the first call; a rerun reads it from storage.
        assert engine.uploads == [b"upload"] + [None] * resumes
        await runner.stop()

    run(main())


def test_plain_jobs_are_not_rerun(store):
    async def main():
        engine = FakeEngine(fail=[RuntimeError("replica died")])
        runner = started(store, engine)
        job = await runner.submit(new_job(Engine.esrgan), b"upload", wait=5)
        assert job.state == JobState.failed and job.resumes == 0 and len(engine.calls) == 1
        await runner.stop()

    run(main())


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


@pytest.mark.parametrize("engine", list(Engine))
def test_every_engine_has_an_estimate(engine):
    """An open Imagen job's estimate raised KeyError once: POST and status answered 500."""
    estimator = Estimator(initial_rates())
    job = new_job(engine)
    job.output_size = Size(width=1000, height=1000)
    assert estimator.estimate(job, jobs_ahead=0, device=None) > 0
    assert estimator.estimate(job, jobs_ahead=2, device="cuda:0") > 0
    job.mark_processing()
    job.started_at -= 100
    job.mark_completed(Completed("results/x.png", "x.png"))
    estimator.learn(job)  # 100 s for this size: the next one like it is estimated so
    assert estimator.estimate(job, 0, None) == pytest.approx(100, rel=0.01)
    assert estimator.estimate(job, 1, None) == pytest.approx(200, rel=0.01)


class SlowHeartbeats(Storage):
    """Real local storage whose writes of a running job's record are held back: a heartbeat
    computed before the job ended lands after its final save."""

    def __init__(self, url: str, delay_s: float, options: dict | None = None):
        super().__init__(url, options)
        self.delay_s = delay_s
        self.delayed = 0

    def write_if(self, key: str, data: bytes, expected: str | None) -> str:
        if key.startswith("jobs/") and b'"state":"processing"' in data:
            self.delayed += 1
            time.sleep(self.delay_s)
        return super().write_if(key, data, expected)


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
