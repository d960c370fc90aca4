"""Job storage on a real S3 endpoint: moto's server on 127.0.0.1 (started and stopped here),
reached through s3fs as production reaches a bucket (UPSCALER_STORAGE_URL=s3://...,
UPSCALER_STORAGE_OPTIONS for the endpoint). Conditional writes (If-Match / If-None-Match), the
lost-update race, and a whole ESRGAN job with its result streamed back."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest
from conftest import TEST_LIMITS, download, photo, png_bytes, settings_from_env, upload
from local_graph import local_client
from test_runner import FakeEngine, SlowHeartbeats, new_job

from serve_app.runner import JobRunner, RunnerTimings
from upscaler.job_store import JobStore
from upscaler.jobs import JobState
from upscaler.storage import Storage, WriteConflict

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.slow  # a server, and s3fs's first connections: seconds


class S3Endpoint:
    def __init__(self, url: str):
        self.url = url
        self.options = {"client_kwargs": {"endpoint_url": url}, "skip_instance_cache": True}

    def storage(self, bucket: str | None = None) -> Storage:
        return Storage(f"s3://{bucket or self.new_bucket()}/upscaler", self.options)

    def new_bucket(self) -> str:
        import s3fs

        name = f"b{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**self.options).mkdir(name)
        return name


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Endpoint]:
    mp = pytest.MonkeyPatch()  # fake credentials for the fake endpoint; nothing real is read
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                        "AWS_CONFIG_FILE": "/nonexistent"}.items():
        mp.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(f"http://{host}:{port}")
    finally:
        server.stop()
        mp.undo()


def test_conditional_writes_on_s3(s3):
    storage = s3.storage()
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


def test_concurrent_updates_on_s3_lose_nothing(s3):
    store = JobStore(s3.storage(), stale_after_s=30)
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


def test_a_late_heartbeat_never_overwrites_the_end_on_s3(s3):
    async def main():
        storage = SlowHeartbeats(f"s3://{s3.new_bucket()}/upscaler", 0.5, s3.options)
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


def test_an_esrgan_job_on_s3(s3, tmp_path, models_root):
    bucket = s3.new_bucket()
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path, models_dir=models_root,
                                 storage_url=f"s3://{bucket}/upscaler",
                                 storage_options=s3.options, sync_wait_s=60, device="cpu")
    with local_client(settings) as client:
        r = upload(client, png_bytes(photo("coffee", (40, 30))), model="tiny-rrdb")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "completed"
        assert download(client, body["outputUrl"]).size == (160, 120)  # streamed from S3
        status = client.get(f"/api/status/{body['jobId']}").json()
        assert status["status"] == "completed" and status["attempts"] == 1
    storage = s3.storage(bucket)
    assert list(storage.list("results")) == [f"results/{body['jobId']}.png"]
    assert list(storage.list("inputs")) == []  # the upload went with the job's end
    assert JobStore(storage, 30).load(body["jobId"]).version >= 1
