"""Job life cycle across failures: a killed replica, a cancelled job, a restarted service."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest
from conftest import (
    TEST_LIMITS,
    free_port,
    photo,
    png_bytes,
    running_service,
    wait_for_job,
)

FAST_STALE = {**TEST_LIMITS, "UPSCALER_HEARTBEAT_S": "1", "UPSCALER_STALE_AFTER_S": "8"}


def slow_job(client: httpx.Client) -> str:
    """A DAT job on CPU that takes many seconds (small tiles), answered `queued` at once."""
    r = client.post("/api/upscale/esrgan",
                    files={"file": ("p.png", png_bytes(photo("coffee", (192, 128))))},
                    data={"tile_size": "64", "wait": "0"})
    assert r.status_code == 202, r.text
    return r.json()["jobId"]


def wait_status(client: httpx.Client, job_id: str, wanted: set[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/status/{job_id}").json()
        if status["status"] in wanted:
            return status
        time.sleep(0.3)
    raise TimeoutError(f"{job_id}: still {status}")


def esrgan_replica_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ServeReplica:upscaler:ESRGAN"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def lifecycle_service(tmp_path_factory, models_root):
    """One service for the failure tests: each leaves it healthy (a killed replica is
    replaced, a cancelled job frees its replica), which the tests themselves check."""
    data = tmp_path_factory.mktemp("lifecycle-data")
    with running_service(data, models_root, data / "service.log", FAST_STALE) as svc:
        yield svc


def test_killed_replica_fails_job_and_service_recovers(lifecycle_service):
    with lifecycle_service.client() as client:
        job_id = slow_job(client)
        wait_status(client, job_id, {"processing"})
        pids = esrgan_replica_pids()
        assert pids, "no ESRGAN replica process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        status = wait_status(client, job_id, {"failed", "completed"}, timeout=60)
        assert status["status"] == "failed"
        assert "worker" in status["error"] and status["progress"] < 100
        # Serve replaces the replica; new work succeeds.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if client.get("/api/health").json()["status"] == "healthy":
                break
            time.sleep(1)
        r = client.post("/api/upscale/esrgan",
                        files={"file": ("p.png", png_bytes(photo("rocket", (24, 24))))},
                        data={"model": "tiny-rrdb"})
        assert r.status_code == 200 and r.json()["status"] == "completed"


def test_cancel_stops_a_running_job(lifecycle_service):
    with lifecycle_service.client() as client:
        job_id = slow_job(client)
        wait_status(client, job_id, {"processing"})
        # The ingress stays responsive while the replica works.
        for _ in range(3):
            start = time.monotonic()
            health = client.get("/api/health").json()
            assert time.monotonic() - start < 5
            assert health["status"] == "healthy" and health["queue_size"] == 1
            assert health["engines"]["esrgan"]["busy_jobs"] == 1
            assert client.get(f"/api/status/{job_id}").json()["status"] == "processing"
        r = client.delete(f"/api/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert client.delete(f"/api/jobs/{job_id}").status_code == 409
        time.sleep(1)
        assert client.get(f"/api/status/{job_id}").json()["status"] == "cancelled"
        # The replica is free again: a small job completes promptly.
        r = client.post("/api/upscale/esrgan",
                        files={"file": ("p.png", png_bytes(photo("rocket", (24, 24))))},
                        data={"model": "tiny-rrdb", "wait": "60"})
        assert r.status_code == 200 and r.json()["status"] == "completed"
        assert client.get("/api/health").json()["queue_size"] == 0


def test_restart_keeps_finished_jobs_and_fails_interrupted_ones(tmp_path, models_root):
    data_dir = tmp_path / "data"
    # No drain: the stop interrupts the job, as a crash or an impatient stop would.
    dashboard = free_port()
    # The service goes down (SIGTERM) with a job in flight when the block is left.
    with running_service(data_dir, models_root, tmp_path / "first.log",
                         {**FAST_STALE, "UPSCALER_INGRESS_DRAIN_S": "0"},
                         dashboard_port=dashboard) as svc:
        # `upscaler serve` says where everything is, and the Ray dashboard answers there.
        deadline = time.monotonic() + 30  # printed once Serve reports the app running
        while "Dashboard:" not in svc.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        for line in (f"API:       {svc.url}/api", f"Docs:      {svc.url}/docs",
                     f"Dashboard: http://127.0.0.1:{dashboard}"):
            assert line in svc.log()
        assert httpx.get(f"http://127.0.0.1:{dashboard}/api/version", timeout=30).is_success
        with svc.client() as client:
            done = client.post("/api/upscale/esrgan",
                               files={"file": ("p.png", png_bytes(photo("rocket", (32, 24))))},
                               data={"model": "tiny-rrdb", "upscale_factor": "2"}).json()
            assert done["status"] == "completed"
            interrupted = slow_job(client)
            wait_status(client, interrupted, {"processing"})
    assert svc.process.returncode == 0, "SIGTERM must stop `upscaler serve` cleanly"
    assert "upscaler: stopped" in svc.log()

    with (running_service(data_dir, models_root, tmp_path / "second.log", FAST_STALE) as svc,
          svc.client() as client):
        status = wait_for_job(client, done["jobId"])
        assert status["status"] == "completed"
        r = client.get(status["output_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert len(r.content) == int(r.headers["content-length"]) > 0
        lost = wait_status(client, interrupted, {"failed", "completed", "cancelled"}, 30)
        assert lost["status"] == "failed" and lost["error_code"] == "worker_lost"
        assert "submit the image again" in lost["error"]
