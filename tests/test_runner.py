"""The job runner without Ray: fake engine calls (tests/helpers/runner.py), a real job store
on a local folder, timings in milliseconds. Submit, wait, cancel, failures, resume, the
estimates; heartbeats, hand-over and take-over are in test_runner_takeover.py."""

from __future__ import annotations

import pytest
from helpers.runner import (
    FAKE_STATS,
    FakeEngine,
    fast_store,
    new_job,
    run,
    started,
    until,
)

from serve_app.engine_specs import initial_rates
from serve_app.estimates import Estimator
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import Completed, Engine, JobState, Size
from upscaler.errors import Conflict, NotFound, RateLimited


@pytest.fixture
def store(tmp_path) -> JobStore:
    return fast_store(tmp_path)


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
