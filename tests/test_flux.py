"""FLUX over HTTP with tiny models in the real formats (Q8_0 GGUF in the community layout, BFL
VAE, CLIP-L, fp8 T5), loaded by the production loader with the hub offline."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TEST_LIMITS,
    photo,
    png_bytes,
    running_service,
    wait_for_job,
)
from flux_factory import write_flux_models
from PIL import Image

# Small tiles and one diffusion step per tile keep a job to seconds per tile on 2 CPU cores.
FLUX_ENV = {**TEST_LIMITS, "UPSCALER_FLUX_MIN_TILE_SIZE": "32", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "UPSCALER_HEARTBEAT_S": "1",
            "UPSCALER_STALE_AFTER_S": "6"}
JOB = {"upscale_factor": "2", "tile_size": "64", "tile_padding": "16", "mask_blur": "4",
       "steps": "2", "denoise": "0.5", "upscale_model": "tiny-rrdb"}


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory, upscale_models_dir):
    root = tmp_path_factory.mktemp("flux-models")
    write_flux_models(root)
    shutil.copytree(upscale_models_dir, root / "upscale_models")
    return root


def submit(client, data: bytes, **fields) -> dict:
    r = client.post("/api/upscale/flux", files={"file": ("p.png", data, "image/png")},
                    data={**JOB, **fields})
    assert r.status_code == 202, r.text
    return r.json()


@pytest.fixture(scope="module")
def flux_service(tmp_path_factory, flux_models):
    data = tmp_path_factory.mktemp("flux-data")
    with running_service(data, flux_models, data / "service.log",
                         {**FLUX_ENV, "UPSCALER_FLUX_MIN_REPLICAS": "2",
                          "UPSCALER_FLUX_MAX_REPLICAS": "2"}, timeout=300) as svc:
        yield svc


def test_flux_job_over_http_exact_size_and_dpi(flux_service):
    with flux_service.client() as client:
        health = client.get("/api/health").json()
        assert health["engines"]["flux"]["installed"] is True
        assert "flux" in health["models_loaded"]
        body = submit(client, png_bytes(photo("coffee", (96, 64))), target_dpi="200")
        assert body["status"] in ("queued", "processing") and body["estimatedTime"] > 0
        assert body["outputSize"] == {"width": 192, "height": 128}
        status = wait_for_job(client, body["jobId"], timeout=600)
        assert status["status"] == "completed", status
        stats = status["stats"]
        assert stats["tiles"] == 6 and stats["tiles_computed"] == 6
        # Both FLUX replicas served tiles of this one job, at the same time.
        assert len(stats["replicas"]) == 2, stats["tile_log"]
        log = stats["tile_log"]
        assert any(a["replica"] != b["replica"] and a["started_at"] < b["finished_at"]
                   and b["started_at"] < a["finished_at"] for a in log for b in log)
        out = Image.open(io.BytesIO(client.get(status["output_url"]).content))
        assert out.size == (192, 128) and round(out.info["dpi"][0]) == 200

        # Same inputs and seed: the same image.
        again = wait_for_job(client, submit(client, png_bytes(photo("coffee", (96, 64))),
                                            target_dpi="200")["jobId"], timeout=600)
        first = np.asarray(out)
        second = np.asarray(Image.open(io.BytesIO(client.get(again["output_url"]).content)))
        assert np.array_equal(first, second)


@pytest.mark.parametrize("fields,code", [
    ({"denoise": "1.5"}, "invalid_request"), ({"steps": "0"}, "invalid_request"),
    ({"steps": "101"}, "invalid_request"), ({"tile_size": "72"}, "invalid_request"),
    ({"tile_size": "4096"}, "invalid_request"), ({"upscale_model": "4x-Nope"}, "unknown_model"),
    ({"upscale_factor": "16", "tile_size": "64"}, "output_too_large"),
])
def test_flux_bad_input(flux_service, fields, code):
    with flux_service.client() as client:
        data = png_bytes(photo("rocket", (400, 400) if code == "output_too_large" else (32, 32)))
        r = client.post("/api/upscale/flux", files={"file": ("p.png", data, "image/png")},
                        data={**JOB, **fields})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == code


def test_flux_cancel_frees_replicas(flux_service):
    with flux_service.client() as client:
        job = submit(client, png_bytes(photo("astronaut", (128, 128))), steps="4")
        deadline = time.monotonic() + 300
        while client.get(f"/api/status/{job['jobId']}").json()["progress"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # ESRGAN is not starved while FLUX works.
        r = client.post("/api/upscale/esrgan",
                        files={"file": ("p.png", png_bytes(photo("rocket", (32, 32))))},
                        data={"model": "tiny-rrdb", "upscale_factor": "2"})
        assert r.status_code == 200 and r.json()["status"] == "completed"
        r = client.delete(f"/api/jobs/{job['jobId']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        time.sleep(2)
        status = client.get(f"/api/status/{job['jobId']}").json()
        assert status["status"] == "cancelled" and status["progress"] < 100
        # The replicas are free: a small job runs right after.
        small = submit(client, png_bytes(photo("rocket", (32, 32))))
        assert wait_for_job(client, small["jobId"], timeout=300)["status"] == "completed"


def _replica_pids(name: str, data_dir) -> list[int]:
    """Replica processes of one service (matched by the data dir in their environment)."""
    out = subprocess.run(["pgrep", "-f", rf"ServeReplica:upscaler:{name}(\.|$)"],
                         capture_output=True, text=True).stdout.split()
    pids = []
    for pid in out:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"UPSCALER_DATA_DIR={data_dir}".encode() in env:
            pids.append(int(pid))
    return pids


def _kill_mid_job(client, image: Image.Image, pid: int, **fields) -> dict:
    """Run a 6-tile job, SIGKILL ``pid`` once 30 % is done; the job must still complete."""
    job = submit(client, png_bytes(image), steps="4", **fields)
    deadline = time.monotonic() + 300
    while client.get(f"/api/status/{job['jobId']}").json()["progress"] < 30:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    status = wait_for_job(client, job["jobId"], timeout=600)
    assert status["status"] == "completed", status
    return status


def test_killed_flux_replica_job_resumes(flux_service):
    with flux_service.client() as client:
        pids = _replica_pids("FLUX", flux_service.data_dir)
        assert len(pids) == 2
        status = _kill_mid_job(client, photo("chelsea", (96, 64)), pids[0], seed="7")
        stats = status["stats"]
        # Either Serve re-routed the lost tile call to the other replica, or the coordinator
        # failed and the job was resumed: both keep every finished tile.
        if status["resumes"]:
            assert stats["tiles_resumed"] >= 1
        assert stats["tiles_resumed"] + stats["tiles_computed"] == 6
        assert len({t["tile"] for t in stats["tile_log"]}) == stats["tiles_computed"]


def test_killed_ingress_flux_job_is_taken_over(flux_service):
    """The Ingress driving a FLUX job dies: Serve starts another, whose periodic sweep finds
    the job's heartbeat stale and resumes it from its stored tiles."""
    with flux_service.client() as client:
        [ingress] = _replica_pids("Ingress", flux_service.data_dir)
        stats = _kill_mid_job(client, photo("rocket", (96, 64)), ingress, seed="3")["stats"]
        assert stats["tiles_resumed"] >= 1
        assert stats["tiles_resumed"] + stats["tiles_computed"] == 6


def test_missing_flux_files_answer_503(client):
    """The session service has no FLUX files: FLUX says what to run, ESRGAN keeps working."""
    r = client.post("/api/upscale/flux",
                    files={"file": ("p.png", png_bytes(photo("rocket", (32, 32))))})
    assert r.status_code == 503
    assert "upscaler models pull flux" in r.json()["message"]
    assert client.get("/api/health").json()["engines"]["flux"]["installed"] is False
    r = client.post("/api/upscale/esrgan",
                    files={"file": ("p.png", png_bytes(photo("rocket", (32, 32))))},
                    data={"model": "tiny-rrdb", "upscale_factor": "2"})
    assert r.status_code == 200


def test_resume_after_restart_computes_only_missing_tiles(tmp_path, flux_models):
    data = tmp_path / "data"
    env = {**FLUX_ENV, "UPSCALER_FLUX_MIN_REPLICAS": "1", "UPSCALER_FLUX_MAX_REPLICAS": "1"}
    # Leaving the block stops the whole service, k tiles in.
    with (running_service(data, flux_models, tmp_path / "first.log", env, timeout=300) as svc,
          svc.client() as client):
        job = submit(client, png_bytes(photo("chelsea", (96, 64))), steps="4")
        tiles_dir = data / "storage" / "jobs" / job["jobId"] / "tiles"
        deadline = time.monotonic() + 300
        while len(list(tiles_dir.glob("*.npy"))) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    k = len(list(tiles_dir.glob("*.npy")))
    assert 2 <= k < 6

    with running_service(data, flux_models, tmp_path / "second.log", env, timeout=300) as svc:
        with svc.client() as client:
            status = wait_for_job(client, job["jobId"], timeout=600)
            assert status["status"] == "completed", status
            assert status["stats"]["tiles_resumed"] == k
            assert status["stats"]["tiles_computed"] == 6 - k
            out = Image.open(io.BytesIO(client.get(status["output_url"]).content))
            assert out.size == (192, 128)
        assert not tiles_dir.exists() or not list(tiles_dir.glob("*.npy"))  # cleaned up
