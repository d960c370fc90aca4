"""End to end against a real `upscaler serve` (Ray Serve on 127.0.0.1) with every engine: what
only a cluster shows. Jobs cross real handles and processes, replicas are killed and replaced,
tiles spread over two FLUX replicas, metrics reach Ray's endpoint."""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np
import pytest
from helpers.api import download, eventually, upload, wait_for_job
from helpers.config import METRICS_INTERVAL_MS
from helpers.images import photo, png_bytes, psnr
from helpers.model_factory import REAL_DAT
from helpers.processes import replica_pids
from helpers.webhook_receiver import WebhookReceiver
from PIL import Image

from upscaler.domain.jobs import Engine
from upscaler.domain.keys import KeyStore

pytestmark = pytest.mark.slow
FLUX_JOB = {"upscale_factor": "2", "tile_padding": "16", "mask_blur": "4", "denoise": "0.5",
            "upscale_model": "tiny-rrdb"}


def wait_status(client, job_id: str, wanted: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/api/status/{job_id}").json()
        if status["status"] in wanted:
            return status
        assert time.monotonic() < deadline, f"{job_id}: still {status}"
        time.sleep(0.2)


def wait_progress(client, job_id: str, percent: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/api/status/{job_id}").json()["progress"] < percent:
        assert time.monotonic() < deadline
        time.sleep(0.1)




def wait_healthy(client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/api/health").json()["status"] != "healthy":
        assert time.monotonic() < deadline
        time.sleep(1)


def test_health_models_and_docs(client, service):
    health = client.get("/api/health").json()
    assert health["status"] == "healthy" and health["gpu_available"] is False
    assert health["models_loaded"] == ["esrgan", "flux", "imagen"]
    assert health["scope"] == "key"  # a tenant's key: its own figures
    # The engines' detail is an operator's: an admin key's.
    # Which models are loaded depends on what the session's earlier tests ran (three are kept):
    # some are, and the default is the real DAT-light (its warm-up: tests/test_api.py).
    eventually(lambda: client.get("/api/health", headers=service.admin()).json()[
        "engines"]["esrgan"]["models_loaded"], timeout=120)
    models = client.get("/api/models").json()["esrgan"]
    assert {m["name"] for m in models["models"]} >= {REAL_DAT, "tiny-rrdb", "tiny-compact"}
    assert models["default"] == REAL_DAT
    assert client.get("/docs").status_code == 200


def test_real_model_on_a_real_photo_beats_bicubic(client):
    """A real photo downscaled 4x, upscaled by the real DAT-light model in its replica."""
    original = photo("astronaut", (192, 192))
    small = original.resize((48, 48), Image.BICUBIC)
    r = upload(client, png_bytes(small), headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["estimatedTime"] > 0 and r.headers["location"] == body["statusUrl"]
    status = wait_for_job(client, body["jobId"])
    assert status["status"] == "completed", status
    assert status["stats"]["architecture"] == "DAT" and status["processing_time"] > 0
    out = download(client, status["output_url"])
    assert out.size == (192, 192) and round(out.info["dpi"][0]) == 150
    reference = np.asarray(original)
    bicubic = np.asarray(small.resize((192, 192), Image.BICUBIC))
    assert psnr(np.asarray(out), reference) > psnr(bicubic, reference) + 0.5


def test_unknown_model_error_crosses_the_handle(client):
    r = upload(client, png_bytes(photo("rocket", (24, 24))), model="4x-Nope")
    assert r.status_code == 422 and r.json()["error"] == "unknown_model"
    assert "tiny-rrdb" in r.json()["message"]


def test_imagen_job_slower_than_the_wait(client, vertex):
    vertex.reset("delay")
    r = upload(client, png_bytes(photo("rocket", (32, 32))), engine="imagen",
               headers={"Prefer": "respond-async"}, upscale_factor="x2")
    assert r.status_code == 202 and r.json()["estimatedTime"] > 0, r.text
    assert client.get(r.json()["statusUrl"]).status_code == 200
    status = wait_for_job(client, r.json()["jobId"], timeout=60)
    assert status["status"] == "completed" and status["output_size"] == {"width": 64,
                                                                         "height": 64}


def test_cancel_frees_the_replica_and_the_ingress_stays_responsive(client, service):
    r = upload(client, png_bytes(photo("coffee", (192, 128))), tile_size=64, wait=0)
    job_id = r.json()["jobId"]
    wait_status(client, job_id, {"processing"})
    busy = []
    for _ in range(10):  # the engines' detail is at most a few seconds old
        start = time.monotonic()
        health = client.get("/api/health", headers=service.admin()).json()
        assert time.monotonic() - start < 1
        assert health["status"] == "healthy" and health["queue_size"] == 1
        busy.append(health["engines"]["esrgan"]["busy_jobs"])
        time.sleep(0.5)
    assert busy[-1] == 1
    r = client.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # The cancel reached the replica: it is free, a small job completes at once.
    r = upload(client, png_bytes(photo("rocket", (24, 24))), model="tiny-rrdb", wait=60)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert client.get("/api/health").json()["queue_size"] == 0


def test_flux_tiles_spread_over_both_replicas(client):
    body = upload(client, png_bytes(photo("coffee", (96, 64))), engine="flux", tile_size=64,
                  steps=8, **FLUX_JOB).json()
    status = wait_for_job(client, body["jobId"], timeout=300)
    assert status["status"] == "completed", status
    stats = status["stats"]
    assert stats["tiles"] == 6 and stats["tiles_computed"] == 6
    assert len(stats["replicas"]) == 2, stats["tile_log"]
    log = stats["tile_log"]
    assert any(a["replica"] != b["replica"] and a["started_at"] < b["finished_at"]
               and b["started_at"] < a["finished_at"] for a in log for b in log)
    assert download(client, status["output_url"]).size == (192, 128)


def test_killed_esrgan_replica_job_runs_again_and_the_service_recovers(client, service):
    """The replica dies under the job: the job is run again from its stored upload, on the
    replica Serve starts instead (attempts: 2)."""
    r = upload(client, png_bytes(photo("coffee", (128, 96))), tile_size=64, wait=0)
    job_id = r.json()["jobId"]
    wait_status(client, job_id, {"processing"})
    for pid in replica_pids("ESRGAN", service.data_dir):
        os.kill(pid, signal.SIGKILL)
    status = wait_status(client, job_id, {"failed", "completed"}, timeout=180)
    assert status["status"] == "completed" and status["attempts"] == 2, status
    assert download(client, status["output_url"]).size == (512, 384)
    wait_healthy(client)
    r = upload(client, png_bytes(photo("rocket", (24, 24))), model="tiny-rrdb")
    assert r.status_code == 200 and r.json()["status"] == "completed"


def test_killed_imagen_replica_job_runs_again_and_the_service_recovers(client, service,
                                                                     vertex):
    vertex.reset(default="slow")  # every call outlasts its timeout: retried to the deadline
    r = upload(client, png_bytes(photo("rocket", (32, 32))), engine="imagen",
               upscale_factor="x2", wait=0)
    job_id = r.json()["jobId"]
    deadline = time.monotonic() + 60
    while not vertex.calls:  # the call to Vertex is in flight
        assert time.monotonic() < deadline
        time.sleep(0.05)
    vertex.reset()  # the second run's call is answered
    for pid in replica_pids("Imagen", service.data_dir):
        os.kill(pid, signal.SIGKILL)
    status = wait_status(client, job_id, {"failed", "completed"}, timeout=180)
    assert status["status"] == "completed" and status["attempts"] == 2, status
    deadline = time.monotonic() + 120
    while not client.get("/api/health", headers=service.admin()).json()["engines"]["imagen"].get(
            "credentials_found"):
        assert time.monotonic() < deadline  # Serve has started a new Imagen replica
        time.sleep(1)
    r = upload(client, png_bytes(photo("rocket", (32, 32))), engine="imagen",
               upscale_factor="x2")
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text


def _flux_job_killing(client, pid: int, seed: str, on_kill=None, **fields) -> dict:
    """A job of 64 tiles; SIGKILL ``pid`` once 30 % is done; the job must still complete."""
    job = upload(client, png_bytes(photo("chelsea", (128, 128))), engine="flux",
                 tile_size=32, steps=4, seed=seed, **FLUX_JOB, **fields).json()
    wait_progress(client, job["jobId"], 30)
    os.kill(pid, signal.SIGKILL)
    if on_kill:
        on_kill()
    status = wait_for_job(client, job["jobId"], timeout=300)
    assert status["status"] == "completed", status
    stats = status["stats"]
    assert stats["tiles_resumed"] + stats["tiles_computed"] == stats["tiles"] == 64
    return status


def test_killed_flux_replica_job_resumes(client, service):
    pids = replica_pids("FLUX", service.data_dir)
    assert len(pids) == 2
    status = _flux_job_killing(client, pids[0], seed="7")
    # Serve re-routed the lost tile call to the other replica, or the coordinator failed
    # and the job was resumed: either way every finished tile was kept.
    if status["resumes"]:
        assert status["stats"]["tiles_resumed"] >= 1
    wait_healthy(client)


def test_killed_ingress_flux_job_is_taken_over(client, service):
    """The Ingress driving a FLUX job dies: Serve starts another, whose sweep finds the job's
    heartbeat stale and resumes it from its stored tiles. Its webhook's started event, refused
    by the receiver until then, is delivered by the new Ingress with the same webhook-id."""
    [ingress] = replica_pids("Ingress", service.data_dir)
    (key,) = [k for k in KeyStore(str(service.data_dir / "keys.json")).list() if k.name == "e2e"]
    rx = WebhookReceiver(key.webhook_secret)
    rx.script["/flux"] = [(503, {"Retry-After": "1"})] * 1000
    killed_at: list[float] = []

    def killed() -> None:
        killed_at.append(time.monotonic())
        rx.script["/flux"].clear()  # the receiver accepts from now on

    deadline = time.monotonic() + 120
    status = None
    try:
        while status is None:  # the new Ingress answers once Serve has started it
            try:
                status = _flux_job_killing(client, ingress, seed="3", on_kill=killed,
                                           webhook_url=rx.url("/flux"),
                                           webhook_events="started,completed")
            except httpx.TransportError:
                assert time.monotonic() < deadline
        assert status["stats"]["tiles_resumed"] >= 1
        mine = lambda: [r for r in rx.at("/flux")  # noqa: E731
                        if r.body and r.body["data"]["job_id"] == status["job_id"]]
        eventually(lambda: [r.body["type"] for r in mine()][-1:] == ["job.completed"], 30)
        started = [r for r in mine() if r.body["type"] == "job.started"]
        assert len(started) >= 2 and len({r.headers["webhook-id"] for r in started}) == 1
        assert started[-1].at > killed_at[-1]  # delivered by the Ingress that took over
        assert all(r.verified for r in rx.at("/flux"))
        eventually(lambda: [d["state"] for d in client.get(
            f"/api/status/{status['job_id']}").json()["webhooks"]["deliveries"]]
            == ["delivered", "delivered"], 30)
    finally:
        rx.close()
    wait_healthy(client)


def test_prometheus_metrics_on_the_ray_endpoint(client, service):
    """Our job metrics are exported on Ray's metrics endpoint beside Serve's own."""
    r = upload(client, png_bytes(photo("rocket", (24, 24))), model="tiny-rrdb",
               upscale_factor=2)
    assert r.status_code == 200
    wanted = ("ray_upscaler_jobs_total{", "ray_upscaler_model_load_seconds",
              "ray_upscaler_job_seconds_bucket", "ray_upscaler_queue_size{",
              "ray_upscaler_delta_e_mean_bucket",  # the job's fidelity report
              "ray_serve_http_request_latency_ms_bucket")  # request latency, Serve's own
    text = _scrape_until(service.metrics_port, wanted)
    jobs = [ln for ln in text.splitlines() if ln.startswith("ray_upscaler_jobs_total{")]
    assert any('engine="esrgan"' in ln and 'status="completed"' in ln for ln in jobs), jobs
    drift = [ln for ln in text.splitlines() if ln.startswith("ray_upscaler_delta_e_mean_count")]
    assert any('engine="esrgan"' in ln for ln in drift), drift
    assert "ray_serve_num_http_requests" in text or "ray_serve_deployment_request_counter" in text
    # Ray drops a gauge its process has not re-reported for two export intervals; ours are
    # re-sent, so the queue gauges set at start are still there well after that.
    time.sleep(5 * METRICS_INTERVAL_MS / 1000)
    text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text
    queues = [ln for ln in text.splitlines() if ln.startswith("ray_upscaler_queue_size{")]
    assert {e.value for e in Engine if any(f'engine="{e.value}"' in ln for ln in queues)} == \
        {e.value for e in Engine}
    assert "ray_upscaler_model_load_seconds" in text


def _scrape_until(port: int, wanted: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:  # Ray exports replicas' metrics every interval
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(1)
    return text
