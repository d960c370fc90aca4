"""Retention over the whole graph in this process: expires_at in every answer (per API key),
410 once a job's retention ran out (before and after the sweep), DELETE of a finished job's
result, the sweep of orphans and temp files, and a full disk answered 507."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from helpers.api import eventually
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client

from upscaler.domain.keys import KeyLimits, KeyStore
from upscaler.domain.storage import StorageError
from upscaler.domain.storage_faults import storage_fault
from upscaler.errors import InsufficientStorage

GOOD = png_bytes(photo("rocket", (24, 24)))
BRIEF_TTL_S = 2.0
GRACE_S = 60.0


@pytest.fixture(scope="module")
def kept(tmp_path_factory, models_root):
    """Keys on: `brief` keeps jobs 2 s, `long` the server's 7 days."""
    data = tmp_path_factory.mktemp("retention-data")
    store = KeyStore(str(data / "keys.json"))
    keys = {"brief": store.create("brief", KeyLimits(result_ttl_s=BRIEF_TTL_S))[1],
            "long": store.create("long")[1]}
    settings = settings_from_env(TEST_LIMITS, data_dir=data, models_dir=models_root,
                                 auth="keys", sync_wait_s=60, device="cpu",
                                 orphan_grace_s=GRACE_S, retention_sweep_s=3600)
    with local_client(settings) as client:
        client.keys, client.root = keys, data / "storage"
        yield client


def auth(client, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.keys[who]}"}


def submit(client, who: str) -> dict:
    r = client.post("/api/upscale/esrgan", headers=auth(client, who),
                    data={"model": "tiny-rrdb", "upscale_factor": "2"},
                    files={"file": ("p.png", GOOD, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def sweep(client):
    return client.graph.services.retention.sweep_once()


def test_expires_at_follows_the_keys_retention(kept):
    body = submit(kept, "long")
    status = kept.get(f"/api/status/{body['jobId']}", headers=auth(kept, "long")).json()
    assert body["expires_at"] == pytest.approx(status["finished_at"] + 7 * 86400)
    assert status["expires_at"] == body["expires_at"]
    brief = submit(kept, "brief")
    status = kept.get(f"/api/status/{brief['jobId']}", headers=auth(kept, "brief")).json()
    assert status["expires_at"] == pytest.approx(status["finished_at"] + BRIEF_TTL_S)


def test_an_expired_job_answers_410_before_and_after_the_sweep(kept):
    body = submit(kept, "brief")
    job_id, headers = body["jobId"], auth(kept, "brief")
    result = kept.root / "results" / f"{job_id}.png"
    assert result.exists()
    eventually(lambda: kept.get(f"/api/status/{job_id}", headers=headers).status_code == 410,
               timeout=BRIEF_TTL_S + 10)
    r = kept.get(f"/api/status/{job_id}", headers=headers)
    assert r.json()["error"] == "job_expired"
    assert kept.get(body["outputUrl"], headers=headers).status_code == 410
    kept_job = submit(kept, "long")["jobId"]
    done = sweep(kept)
    assert done["jobs"] >= 1
    assert not result.exists() and not (kept.root / "jobs" / f"{job_id}.json").exists()
    assert (kept.root / "expired" / job_id).exists()  # the tombstone
    r = kept.get(f"/api/status/{job_id}", headers=headers)
    assert r.status_code == 410 and r.json()["error"] == "job_expired"
    assert kept.get(body["outputUrl"], headers=headers).status_code == 410
    # Jobs still within their retention are left alone.
    assert kept.get(f"/api/status/{kept_job}", headers=auth(kept, "long")).status_code == 200


def test_delete_removes_a_finished_jobs_result(kept):
    body = submit(kept, "long")
    job_id, headers = body["jobId"], auth(kept, "long")
    result = kept.root / "results" / f"{job_id}.png"
    assert kept.get(body["outputUrl"], headers=headers).status_code == 200
    for _ in range(2):  # the second DELETE answers the same
        r = kept.delete(f"/api/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed" and r.json()["result_deleted"] is True
        assert r.json()["output_url"] is None
    assert not result.exists()
    r = kept.get(body["outputUrl"], headers=headers)
    assert r.status_code == 410 and r.json()["error"] == "result_deleted"
    status = kept.get(f"/api/status/{job_id}", headers=headers).json()
    assert status["result_deleted"] is True and status["output_url"] is None


def _plant(path: Path, age_s: float, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_sweep_removes_orphans_and_temp_files(kept):
    root, old = kept.root, GRACE_S + 60
    stale = {
        "orphan upload": _plant(root / "inputs" / ("a" * 32), old),
        "orphan result": _plant(root / "results" / ("b" * 32 + ".png"), old),
        "temp record": _plant(root / "jobs" / f"{'c' * 32}.json.0123.tmp", old),
        "temp upload": _plant(root / "inputs" / f"{'d' * 32}.4567.tmp", old),
        "expired key": _plant(root / "idempotency" / ("e" * 64 + ".json"), 0, json.dumps(
            {"expires_at": time.time() - 1}).encode()),
    }
    fresh = {
        "recent upload": _plant(root / "inputs" / ("f" * 32), 1),
        "recent temp": _plant(root / "results" / f"{'0' * 32}.png.89ab.tmp", 1),
        "live key": _plant(root / "idempotency" / ("1" * 64 + ".json"), old, json.dumps(
            {"expires_at": time.time() + 3600}).encode()),
    }
    done = sweep(kept)
    assert {name for name, p in stale.items() if p.exists()} == set()
    assert {name for name, p in fresh.items() if not p.exists()} == set()
    assert done["orphan_inputs"] >= 1 and done["orphan_results"] >= 1 and done["tmp"] >= 2
    assert done["idempotency_keys"] >= 1
    for path in fresh.values():  # the module's other tests see a clean storage
        path.unlink()


def test_a_full_disk_answers_507_and_leaves_no_temp_file(kept, monkeypatch):
    """ENOSPC simulated at the storage boundary (the filesystem's open): the upload cannot be
    stored, the client hears 507 with what to do, no *.tmp stays; space back, it works."""
    fs = kept.graph.services.store.storage.fs
    real_open = fs.open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="rb", **kwargs):
        f = real_open(path, mode, **kwargs)
        return FullFile(f) if "w" in mode else f

    monkeypatch.setattr(fs, "open", full_open)
    r = kept.post("/api/upscale/esrgan", headers=auth(kept, "long"),
                  data={"model": "tiny-rrdb", "upscale_factor": "2"},
                  files={"file": ("p.png", GOOD, "image/png")})
    monkeypatch.undo()
    assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
    assert "storage is full" in r.json()["message"]
    assert list(kept.root.rglob("*.tmp")) == []
    submit(kept, "long")  # space is back: the service works again by itself


def test_storage_faults_map_to_507_and_503():
    assert isinstance(storage_fault(OSError(errno.ENOSPC, "full")), InsufficientStorage)
    away = storage_fault(ConnectionRefusedError("no route"))
    assert isinstance(away, StorageError) and away.http_status == 503 and away.retry_after
    assert storage_fault(OSError(errno.EIO, "I/O error")).http_status == 503
    assert storage_fault(FileNotFoundError("gone")) is None


@pytest.mark.slow  # s3fs retries a refused connection for a few seconds
def test_an_object_store_away_is_503_until_it_returns(monkeypatch, tmp_path):
    """A real S3 endpoint (moto's server on 127.0.0.1) behind the real Storage and error
    mapping: stopped, a write answers 503 storage_unavailable; started again, it works, with
    nothing restarted."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    import fsspec
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from helpers.processes import free_port
    from moto.server import ThreadedMotoServer

    from serve_app.errors import install_error_handlers
    from upscaler.domain.storage import Storage

    port = free_port()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Where s3:// URLs go (fsspec's configuration), and no client-side retries to wait out.
    monkeypatch.setitem(fsspec.config.conf, "s3", {
        "endpoint_url": f"http://127.0.0.1:{port}", "skip_instance_cache": True,
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        fsspec.filesystem("s3").mkdir("jobs-bucket")
        storage = Storage("s3://jobs-bucket/upscaler")
        app = FastAPI()
        install_error_handlers(app)

        @app.post("/store/{key}")
        def store(key: str) -> dict:
            storage.write_bytes(f"inputs/{key}", b"bytes")
            return {"stored": storage.read_bytes(f"inputs/{key}").decode()}

        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/store/a").json() == {"stored": "bytes"}
            server.stop()
            r = client.post("/store/b")
            assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
            assert r.headers["retry-after"]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            assert client.post("/store/c").json() == {"stored": "bytes"}
    finally:
        server.stop()
