"""Fencing (deployments/fencing.py): an engine run is one attempt of its job; once the record
has moved on (a takeover's newer attempt, an end elsewhere) the run stops within about a
second and writes nothing, so a job is never computed twice at once and a stale run's result
never replaces the current attempt's. In process: the real ESRGAN deployment class on a tiny
model, the real job runner, a local job store."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.runner import FakeEngine, new_job, until

from deployments.esrgan import EsrganDeployment
from deployments.fencing import FENCE_EVERY_S, AttemptFence, write_result
from serve_app.runner import JobRunner, RunnerTimings
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import (
    Completed,
    Engine,
    EsrganParams,
    JobRecord,
    JobState,
    Progress,
    Size,
)
from upscaler.errors import Superseded

SIZE = (160, 128)  # 20 tiles of 32: seconds of work, far more than the fence needs


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory, models_root) -> EsrganDeployment:
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path_factory.mktemp("fence"),
                                 models_dir=models_root, device="cpu", stale_after_s=5,
                                 default_models=["tiny-rrdb"])
    return EsrganDeployment.func_or_class(settings)


def open_job(store: JobStore, size: tuple[int, int] = SIZE, **fields
             ) -> tuple[JobRecord, bytes]:
    """An ESRGAN job as a runner stores it (record and upload), processing its attempt 1."""
    w, h = size
    job = JobRecord(engine=Engine.esrgan, params=EsrganParams(model="tiny-rrdb", tile_size=32),
                    input_format="PNG", plan=calculate_output_dimensions(w, h, 4),
                    input_size=Size(width=w, height=h), output_size=Size(width=4 * w,
                                                                         height=4 * h),
                    state=JobState.processing, lease_owner="driver-1", **fields)
    data = png_bytes(photo("coffee", size))
    store.storage.write_bytes(JobStore.input_key(job.job_id), data)
    store.save(job)
    return job, data


def take_over(job_id: str):
    def claim(stored: JobRecord) -> JobRecord:  # what JobStore.claim writes
        stored.attempts += 1
        stored.lease_owner = "driver-2"
        return stored
    return claim


def cancel(stored: JobRecord) -> JobRecord:
    stored.mark_cancelled()
    return stored


def stop_bound(progress_times: list[float]) -> float:
    """How soon a run must stop once its job moved on: the fence's next read (about a second,
    plus the read), then the tile in progress. A tile's time is measured, not assumed: on a
    shared CPU it swings from a tenth of a second to seconds."""
    tiles = [b - a for a, b in zip(progress_times, progress_times[1:], strict=False)]
    return FENCE_EVERY_S + 1.0 + 1.5 * max(tiles, default=1.0)


@pytest.mark.parametrize("move_on", ["take_over", "cancel"])
def test_a_running_engine_call_stops_when_its_job_moves_on(esrgan, move_on):
    store = esrgan.store
    job, data = open_job(store)
    progress: list[float] = []

    async def main() -> float:
        moved_at = None
        with pytest.raises(Superseded) as err:
            async for event in esrgan.run(job.spec(), data):
                if isinstance(event, Progress):
                    progress.append(time.monotonic())
                if len(progress) == 2 and moved_at is None:  # mid-run, a tile's time known
                    change = take_over(job.job_id) if move_on == "take_over" else cancel
                    await asyncio.to_thread(store.update, job.job_id, change)
                    moved_at = time.monotonic()
                assert not isinstance(event, Completed), "ran to its end"
        assert moved_at is not None
        assert err.value.http_status == 409 and err.value.code == "job_superseded"
        return time.monotonic() - moved_at

    before = esrgan.status().superseded_jobs
    took = asyncio.run(asyncio.wait_for(main(), 120))
    assert took < stop_bound(progress), (took, progress)
    assert esrgan.status().superseded_jobs == before + 1 and esrgan.status().busy_jobs == 0
    assert not store.storage.exists(JobStore.result_key(job.spec().result_filename))


def test_a_stale_runs_result_never_replaces_the_current_attempts(esrgan):
    store = esrgan.store
    job, _ = open_job(store)
    stale = job.spec()
    store.update(job.job_id, take_over(job.job_id))
    current = store.load(job.job_id).spec()
    assert current.attempt == 2
    with pytest.raises(Superseded, match="attempt 2"):
        write_result(store, stale, b"attempt 1", retry_s=1)
    key = write_result(store, current, b"attempt 2", retry_s=1)
    done = store.load(job.job_id)
    done.mark_completed(Completed(key, current.result_filename))
    store.save(done)
    with pytest.raises(Superseded, match="completed"):
        write_result(store, stale, b"attempt 1", retry_s=1)
    with pytest.raises(Superseded):
        AttemptFence(store, stale).ensure_current()
    assert store.storage.read_bytes(key) == b"attempt 2"


def test_a_takeover_stops_the_dead_drivers_engine_call_and_the_job_runs_once(esrgan):
    """The driver of attempt 1 died (its lease ran out) while its engine call goes on in the
    replica. Another runner's sweep claims the job (attempt 2); the old call stops within
    about a second (it held the replica's device: the new one waits for it), and the job
    completes once, with attempt 2's result."""
    store = esrgan.store
    # Run twice (in part, then whole): smaller, 8 tiles.
    job, data = open_job(store, (128, 64), lease_expires_at=time.time() - 1)
    timings = RunnerTimings(heartbeat_s=0.05, stale_after_s=5, progress_save_s=0.2)
    for other in store.open_job_ids():  # earlier tests' jobs: not this runner's to sweep
        if other != job.job_id:
            store.delete_work_files(other)

    async def main() -> None:
        progress: list[float] = []

        async def orphan() -> None:  # the dead driver's call, still streaming in the replica
            async for event in esrgan.run(job.spec(), data):
                if isinstance(event, Progress):
                    progress.append(time.monotonic())

        old = asyncio.ensure_future(orphan())
        await until(lambda: len(progress) >= 2, 60)
        runner = JobRunner(JobStore(store.storage, timings.stale_after_s), esrgan.run, timings)
        runner.start()  # sweeps at once: claims the job
        await until(lambda: store.load(job.job_id).attempts == 2, 10)
        claimed = time.monotonic()
        with pytest.raises(Superseded):
            await asyncio.wait_for(old, 30)
        assert time.monotonic() - claimed < stop_bound(progress)
        await until(lambda: store.load(job.job_id).state == JobState.completed, 120)
        await runner.stop()

    before = esrgan.status()
    asyncio.run(asyncio.wait_for(main(), 120))
    after, done = esrgan.status(), store.load(job.job_id)
    assert after.superseded_jobs == before.superseded_jobs + 1
    assert after.completed_jobs == before.completed_jobs + 1  # computed to its end once
    assert done.attempts == 2 and done.lease_owner != "driver-1"
    assert list(store.storage.list("results")).count(done.result_key) == 1


def test_a_superseded_call_makes_its_driver_stop_and_write_nothing(tmp_path):
    """The driver hears ``Superseded`` from its engine call (it was cut off and the job was
    claimed meanwhile): it writes nothing and takes the stored record as the truth; the job
    is not failed."""
    from upscaler.domain.storage import Storage

    timings = RunnerTimings(heartbeat_s=30, stale_after_s=30, progress_save_s=60)
    store = JobStore(Storage(str(tmp_path / "storage")), timings.stale_after_s)
    engine = FakeEngine(steps=50, step_s=0.02)
    ended: list[JobRecord] = []

    async def on_ended(job: JobRecord) -> None:
        ended.append(job)

    async def main() -> None:
        runner = JobRunner(store, engine.run, timings, on_ended=on_ended)
        runner.start()
        job = await runner.submit(_job(), b"upload", wait=0)
        await until(lambda: job.state == JobState.processing)
        claimed = store.update(job.job_id, take_over(job.job_id))
        assert claimed is not None
        engine.fail.append(Superseded("job was taken over: attempt 2 runs it now"))
        await until(lambda: not runner.drives(job.job_id))
        stored = store.load(job.job_id)
        assert stored.version == claimed.version  # nothing written after the claim
        assert not stored.state.is_terminal and stored.lease_owner == "driver-2"
        assert job.attempts == 2 and job.lease_owner == "driver-2"  # adopted
        assert engine.calls == [job.job_id] and ended == []
        await runner.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def _job() -> JobRecord:
    return new_job(Engine.esrgan)
