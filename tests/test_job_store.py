"""Job storage and the job store on fsspec: a local folder and an object-store-like backend
(fsspec's in-memory filesystem, which takes the single-PUT path that S3/GCS take)."""

from __future__ import annotations

import json
import multiprocessing
import uuid

import pytest

from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.domain.job_store import JobStore, LeaseLost
from upscaler.domain.jobs import (
    Completed,
    Engine,
    EsrganParams,
    FluxParams,
    JobRecord,
    JobState,
    Size,
)
from upscaler.domain.storage import Storage, StorageError, WriteConflict


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


def test_expired_leases_are_claimed_once_then_failed_when_attempts_are_spent(storage):
    store = JobStore(storage, stale_after_s=30)
    fresh, expired = _job(), _job(heartbeat_at=0.0)
    spent = _job(Engine.flux, lease_owner="dead", lease_expires_at=1.0, attempts=3)
    for job in (fresh, expired, spent):
        storage.write_bytes(JobStore.input_key(job.job_id), b"png")
        store.save(job)
    assert {job.job_id for job in store.expired_jobs()} == {expired.job_id, spent.job_id}
    claimed = store.claim(expired.job_id, "me", max_attempts=3)
    assert claimed.lease_owner == "me" and claimed.attempts == 2
    assert claimed.state == JobState.queued and claimed.version == 2
    assert store.claim(expired.job_id, "other", max_attempts=3) is None  # leased now
    assert store.claim(fresh.job_id, "other", max_attempts=3) is None
    failed = store.claim(spent.job_id, "me", max_attempts=3)
    assert failed.state == JobState.failed and failed.error_code == "worker_lost"
    assert "3 time(s)" in failed.error
    assert store.load(spent.job_id).state == JobState.failed  # stored
    assert store.load(fresh.job_id).state == JobState.queued  # reading never writes


def test_write_if_creates_once_and_replaces_only_the_version_read(storage):
    token = storage.write_if("jobs/a.json", b"v1", None)
    with pytest.raises(WriteConflict):
        storage.write_if("jobs/a.json", b"again", None)  # must not exist
    data, read_token = storage.read_versioned("jobs/a.json")
    assert data == b"v1" and read_token == token
    new = storage.write_if("jobs/a.json", b"v2", token)
    with pytest.raises(WriteConflict):
        storage.write_if("jobs/a.json", b"lost update", token)  # a stale version
    assert storage.read_versioned("jobs/a.json") == (b"v2", new)
    with pytest.raises(WriteConflict):
        storage.write_if("jobs/gone.json", b"x", token)
    assert list(storage.list("jobs")) == ["jobs/a.json"]  # no lock file, no temp file


def test_driver_saves_never_overwrite_an_ended_job_or_another_drivers_lease(storage):
    store = JobStore(storage, stale_after_s=30)
    job = _job(lease_owner="a")
    store.save(job)
    late = job.model_copy(deep=True)  # a heartbeat computed before the job ended
    late.mark_processing()
    job.mark_completed(Completed("results/x.png", "x.png"))
    store.save(job)
    with pytest.raises(LeaseLost) as lost:
        store.save(late)
    assert lost.value.record.state == JobState.completed
    assert store.load(job.job_id).state == JobState.completed
    other = _job(lease_owner="b")
    store.save(other)
    intruder = other.model_copy(update={"lease_owner": "a", "progress": 50.0})
    with pytest.raises(LeaseLost):
        store.save(intruder)
    assert store.load(other.job_id).progress == 0
    # Its end too (fencing): the lease's holder runs a newer attempt, whose result is kept.
    intruder.mark_completed(Completed("results/x.png", "x.png"))
    with pytest.raises(LeaseLost) as lost:
        store.save(intruder)
    assert lost.value.record.lease_owner == "b"
    assert store.load(other.job_id).state == JobState.queued


def test_a_released_attempts_late_save_never_overwrites_the_attempt_that_claimed_it(storage):
    """One runner lets a job go (storage was down past its lease) and its own sweep claims it
    again: a save of the old attempt that lands late (a retried release) is refused."""
    store = JobStore(storage, stale_after_s=30)
    job = _job(lease_owner="me")
    store.save(job)
    released = job.model_copy(deep=True)
    released.heartbeat_at = released.lease_expires_at = 0.0
    store.save(released)
    claimed = store.claim(job.job_id, "me", max_attempts=3)
    assert claimed.attempts == 2 and claimed.lease_owner == "me"
    with pytest.raises(LeaseLost) as lost:
        store.save(released)
    assert lost.value.record.attempts == 2
    assert store.load(job.job_id).attempts == 2
    claimed.attempts += 1  # the driver itself runs it again (its replica died): allowed
    store.save(claimed)
    assert store.load(job.job_id).attempts == 3


def _count_up(url: str, times: int) -> None:
    store = JobStore(Storage(url), stale_after_s=30)
    for _ in range(times):
        store.update(JOB_ID, lambda job: job.model_copy(update={"resumes": job.resumes + 1}))


JOB_ID = "0" * 32


def test_concurrent_updates_from_processes_lose_nothing(tmp_path):
    """Local files: writers in several processes (the flock scheme), each read-modify-write
    conditional: every increment lands."""
    url = str(tmp_path / "storage")
    JobStore(Storage(url), 30).save(_job(job_id=JOB_ID))
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_count_up, args=(url, 40)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    job = JobStore(Storage(url), 30).load(JOB_ID)
    assert job.resumes == 160 and job.version == 161
    assert not [p for p in (tmp_path / "storage" / "jobs").iterdir() if p.suffix == ".tmp"]


def test_a_failed_local_write_leaves_no_temp_file(tmp_path):
    storage = Storage(str(tmp_path / "storage"))
    storage.write_bytes("results/a.png", b"1")
    with pytest.raises(TypeError):
        storage.write_bytes("results/b.png", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        storage.write_if("jobs/b.json", object(), None)  # type: ignore[arg-type]
    names = [p.name for p in (tmp_path / "storage").rglob("*")]
    assert not [n for n in names if n.endswith(".tmp")], names


def test_records_round_trip_typed_and_older_records_still_load(storage):
    """Params are typed per engine; a record written before that (no params.engine, an
    ``owner`` field since dropped) loads."""
    store = JobStore(storage, stale_after_s=30)
    job = _job(Engine.flux)
    store.save(job)
    back = store.load(job.job_id)
    assert back == job and isinstance(back.params, FluxParams) and back.resumable
    old = job.model_dump(mode="json")
    del old["params"]["engine"]
    old["owner"] = "a-runner"
    storage.write_bytes(JobStore.record_key(job.job_id), json.dumps(old).encode())
    assert store.load(job.job_id).params == job.params
    assert store.load(job.job_id).spec().result_filename == f"{job.job_id}.png"
