"""Job storage and the job store on fsspec: a local folder and an object-store-like backend
(fsspec's in-memory filesystem, which takes the single-PUT path that S3/GCS take)."""

from __future__ import annotations

import json
import uuid

import pytest

from upscaler.dimensions import calculate_output_dimensions
from upscaler.job_store import JobStore
from upscaler.jobs import Completed, Engine, EsrganParams, FluxParams, JobRecord, JobState, Size
from upscaler.storage import Storage, StorageError


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "storage"))
    return Storage(f"memory://upscaler-test-{uuid.uuid4().hex}")


def test_write_read_list_delete(storage):
    storage.write_bytes("inputs/a", b"1")
    storage.write_bytes("inputs/b", b"22")
    assert storage.read_bytes("inputs/b") == b"22" and storage.size("inputs/b") == 2
    assert sorted(storage.list("inputs")) == ["inputs/a", "inputs/b"]
    assert list(storage.list("nothing-here")) == []
    storage.delete("inputs/a")
    storage.delete("inputs/a")  # deleting what is gone is not an error
    assert not storage.exists("inputs/a") and storage.exists("inputs/b")
    storage.check_usable()
    assert list(storage.list("probe")) == []  # the probe cleans up after itself


def test_unusable_storage_stops_with_a_clear_message(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = Storage(str(blocker / "storage"))
    with pytest.raises(StorageError, match="storage_url .*UPSCALER_STORAGE_URL"):
        storage.check_usable()


def _job(engine: Engine = Engine.esrgan, **fields) -> JobRecord:
    params = EsrganParams(model="m") if engine == Engine.esrgan else FluxParams(upscale_model="m")
    return JobRecord(engine=engine, params=params, plan=calculate_output_dimensions(8, 8, 4),
                     input_size=Size(width=8, height=8), output_size=Size(width=32, height=32),
                     **fields)


def test_open_jobs_are_those_with_an_upload(storage):
    store = JobStore(storage, stale_after_s=30)
    running, done = _job(), _job()
    for job in (running, done):
        storage.write_bytes(JobStore.input_key(job.job_id), b"png")
        store.save(job)
    done.mark_completed(Completed("results/x.png", "x.png"))
    store.save(done)
    store.delete_work_files(done.job_id)
    assert store.open_job_ids() == [running.job_id]
    assert store.load(done.job_id).state == JobState.completed  # the record stays


def test_sweep_fails_stale_jobs_and_returns_resumable_ones(storage):
    store = JobStore(storage, stale_after_s=30)
    fresh, stale_plain = _job(), _job(heartbeat_at=0.0)
    stale_flux = _job(Engine.flux, heartbeat_at=0.0)
    for job in (fresh, stale_plain, stale_flux):
        storage.write_bytes(JobStore.input_key(job.job_id), b"png")
        store.save(job)
    found = {job.job_id: job for job in store.abandoned_jobs()}
    assert set(found) == {stale_plain.job_id, stale_flux.job_id}
    assert found[stale_plain.job_id].state == JobState.failed
    assert found[stale_plain.job_id].error_code == "worker_lost"
    assert store.load(stale_plain.job_id).state == JobState.failed  # saved
    assert found[stale_flux.job_id].state == JobState.queued  # left to resume


def test_records_round_trip_typed_and_older_records_still_load(storage):
    """Params are typed per engine; a record written before that (no params.engine) loads."""
    store = JobStore(storage, stale_after_s=30)
    job = _job(Engine.flux)
    store.save(job)
    back = store.load(job.job_id)
    assert back == job and isinstance(back.params, FluxParams) and back.resumable
    old = job.model_dump(mode="json")
    del old["params"]["engine"]
    storage.write_bytes(JobStore.record_key(job.job_id), json.dumps(old).encode())
    assert store.load(job.job_id).params == job.params
    assert store.load(job.job_id).spec().result_filename == f"{job.job_id}.png"
