"""GPUs on demand: FLUX scaled to zero replicas when idle, started by the job that needs one,
and gone again once idle, on a real `upscaler serve`."""

from __future__ import annotations

import httpx
import pytest
from conftest import (
    FLUX_ENV,
    download,
    eventually,
    photo,
    png_bytes,
    running_service,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow
COLD_START_S = 45


def flux_status(client: httpx.Client) -> dict:
    return client.get("/api/health").json()["engines"]["flux"]


def test_flux_starts_for_a_job_and_scales_back_to_zero(tmp_path, full_models_root):
    env = {**FLUX_ENV, "UPSCALER_FLUX_MIN_REPLICAS": "0", "UPSCALER_FLUX_MAX_REPLICAS": "1",
           "UPSCALER_FLUX_IDLE_S": "2", "UPSCALER_FLUX_COLD_START_S": str(COLD_START_S)}
    with running_service(tmp_path / "data", full_models_root, tmp_path / "service.log", env,
                         timeout=300) as svc, svc.client() as client:
        # Nothing runs FLUX, and asking for health does not start it.
        eventually(lambda: flux_status(client).get("state") == "scaled_to_zero", timeout=60)
        health = client.get("/api/health").json()
        assert health["status"] == "healthy" and flux_status(client)["replicas"] == 0

        answer = upload(client, png_bytes(photo("coffee", (64, 48))), engine="flux",
                        tile_size=64, tile_padding=16, mask_blur=4, steps=2, denoise=0.3,
                        upscale_factor=2, upscale_model="tiny-rrdb", wait=0)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] == "queued" and body["estimatedTime"] >= COLD_START_S

        status = wait_for_job(client, body["jobId"], timeout=300)
        assert status["status"] == "completed", status
        assert download(client, status["output_url"]).size == (128, 96)
        # Idle again: Serve stops the replica (flux_idle_s after its last request).
        eventually(lambda: flux_status(client).get("state") == "scaled_to_zero", timeout=120,
                   every=2)
