"""A whole service (two Ingress replicas) stopped with work in flight and queued, then started
again on the same storage: finished jobs and results are kept, interrupted and queued ESRGAN
jobs run again from their stored uploads (each once more: attempts 2), an interrupted FLUX job
resumes from its stored tiles and computes only the rest; then one of the two Ingress
replicas is killed under load, and every POST still ends in one completed job."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from helpers.api import wait_for_job
from helpers.config import FAST_STALE, FLUX_ENV, TEST_LIMITS
from helpers.images import photo, png_bytes
from helpers.processes import free_port, replica_pids
from helpers.service import Service, running_service

from upscaler_client import AsyncClient

pytestmark = pytest.mark.slow
FLUX_JOB = {"upscale_factor": "2", "tile_size": "32", "tile_padding": "16", "mask_blur": "4",
            "steps": "40", "denoise": "1.0", "upscale_model": "tiny-rrdb"}


def post(client, engine: str, data: bytes, **fields) -> dict:
    r = client.post(f"/api/upscale/{engine}", files={"file": ("p.png", data, "image/png")},
                    data=fields)
    assert r.status_code in (200, 202), r.text
    return r.json()


def wait_until(check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_restart_keeps_finished_jobs_reruns_interrupted_ones_and_resumes_flux(
        tmp_path, full_models_root):
    data_dir = tmp_path / "data"
    # No drain: the stop interrupts the ESRGAN job, as a crash or an impatient stop would.
    env = {**TEST_LIMITS, **FLUX_ENV, **FAST_STALE, "UPSCALER_INGRESS_DRAIN_S": "0",
           "UPSCALER_INGRESS_REPLICAS": "2"}
    dashboard = free_port()
    # The service goes down (SIGTERM) with both jobs in flight when the block is left.
    with running_service(data_dir, full_models_root, tmp_path / "first.log", env,
                         dashboard_port=dashboard, timeout=300) as svc:
        # `upscaler serve` says where everything is, and the Ray dashboard answers there.
        wait_until(lambda: "Dashboard:" in svc.log(), 30)
        for line in (f"API:       {svc.url}/api", f"Docs:      {svc.url}/docs",
                     f"Dashboard: http://127.0.0.1:{dashboard}"):
            assert line in svc.log()
        assert httpx.get(f"http://127.0.0.1:{dashboard}/api/version", timeout=30).is_success
        with svc.client() as client:
            done = post(client, "esrgan", png_bytes(photo("rocket", (32, 24))),
                        model="tiny-rrdb", upscale_factor="2")
            assert done["status"] == "completed"
            # FLUX first: its ESRGAN pre-pass must not wait behind the slow ESRGAN job.
            flux = post(client, "flux", png_bytes(photo("chelsea", (128, 128))), **FLUX_JOB)
            tiles_dir = data_dir / "storage" / "jobs" / flux["jobId"] / "tiles"
            wait_until(lambda: len(list(tiles_dir.glob("*.npy"))) >= 2)
            # DAT-light in six windows: seconds, so it is still running at the stop (which
            # follows at once: the queued jobs are posted first, on a busy machine too).
            esrgan = post(client, "esrgan", png_bytes(photo("coffee", (192, 128))),
                          tile_size="64", wait="0")
            queued = [post(client, "esrgan", png_bytes(photo("rocket", (32, 24))),
                           model="tiny-rrdb", wait="0")["jobId"] for _ in range(3)]
            wait_until(lambda: client.get(f"/api/status/{esrgan['jobId']}").json()["status"]
                       == "processing")
    assert svc.process.returncode == 0, "SIGTERM must stop `upscaler serve` cleanly"
    assert "upscaler: stopped" in svc.log()
    k = len(list(tiles_dir.glob("*.npy")))
    assert 2 <= k < 64

    with (running_service(data_dir, full_models_root, tmp_path / "second.log", env,
                          timeout=300) as svc, svc.client() as client):
        status = wait_for_job(client, done["jobId"])
        assert status["status"] == "completed"
        r = client.get(status["output_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert len(r.content) == int(r.headers["content-length"]) > 0
        rerun = wait_for_job(client, esrgan["jobId"], timeout=300)
        assert rerun["status"] == "completed" and rerun["attempts"] == 2, rerun
        for job_id in queued:  # done before the stop, or run again after it: each once
            status = wait_for_job(client, job_id, timeout=120)
            assert status["status"] == "completed" and status["attempts"] <= 2, status
        resumed = wait_for_job(client, flux["jobId"], timeout=600)
        assert resumed["status"] == "completed", resumed
        assert resumed["stats"]["tiles_resumed"] == k
        assert resumed["stats"]["tiles_computed"] == 64 - k
        assert client.get(resumed["output_url"]).status_code == 200

        # One of the two Ingress replicas dies under load: every POST sent through the
        # project's client ends in one completed job (test below).
        posts_on_a_killed_ingress_each_end_in_one_job(svc)
    assert not list(tiles_dir.glob("*.npy"))  # cleaned up
    assert not list((data_dir / "storage" / "inputs").iterdir())  # every upload went


def posts_on_a_killed_ingress_each_end_in_one_job(svc: Service, posts: int = 24) -> None:
    """POSTs in flight on an Ingress replica SIGKILLed under load: one the killed replica was
    taking is answered 503 ``replica_lost`` by the proxy, or its connection drops, and the
    client repeats it with the same Idempotency-Key; jobs it drove are taken over by the other
    replica's sweep. No POST is lost, no job is made twice, no answer is Serve's plain 500."""
    records = svc.data_dir / "storage" / "jobs"
    before = {p.name for p in records.glob("*.json")}
    errors: list[tuple[int, str]] = []  # every 5xx the client saw: status, content type

    async def seen(response: httpx.Response) -> None:
        if response.status_code >= 500:
            errors.append((response.status_code, response.headers.get("content-type", "")))

    image = png_bytes(photo("coffee", (160, 120)))

    async def run():
        async with AsyncClient(svc.url, max_retries=10, poll_interval=0.3,
                               event_hooks={"response": [seen]}) as client:
            tasks = [asyncio.create_task(client.submit(image, model="tiny-rrdb", factor=2,
                                                       wait=0)) for _ in range(posts)]
            # Killed once a few are answered: the rest are on their way, on both replicas.
            while sum(t.done() for t in tasks) < 3:
                await asyncio.sleep(0.01)
            ingresses = replica_pids("Ingress", svc.data_dir)
            assert len(ingresses) == 2
            os.kill(ingresses[0], signal.SIGKILL)
            jobs = await asyncio.gather(*tasks)
            ended = await asyncio.gather(*(client.wait(job, timeout=300) for job in jobs))
            return jobs, ended

    jobs, ended = asyncio.run(run())
    assert len({job.id for job in jobs}) == posts  # each POST its own job
    assert all(job.status == "completed" for job in ended), [j.status for j in ended]
    made = {p.name for p in records.glob("*.json")} - before
    assert len(made) == posts  # no job made twice by a repeat
    assert not [e for e in errors if not e[1].startswith("application/json")], errors
