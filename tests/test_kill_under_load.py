"""POSTs in flight on an Ingress replica killed under load (a real service, two Ingress
replicas): every upscale POST sent through the project's client ends in one job that completes
(a POST the killed replica was taking is answered 503 ``replica_lost`` by the proxy, or its
connection drops, and the client repeats it with the same Idempotency-Key), no job is made
twice, and no answer is Serve's plain-text 500."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.config import FAST_STALE, FLUX_ENV, TEST_LIMITS
from helpers.images import photo, png_bytes
from helpers.processes import replica_pids
from helpers.service import Service, running_service

from upscaler_client import AsyncClient

pytestmark = pytest.mark.slow
POSTS = 24


@pytest.fixture(scope="module")
def two_ingresses(tmp_path_factory, full_models_root) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("kill-under-load")
    env = {**TEST_LIMITS, **FLUX_ENV, **FAST_STALE, "UPSCALER_INGRESS_REPLICAS": "2",
           "UPSCALER_FLUX_MIN_REPLICAS": "0", "UPSCALER_FLUX_MAX_REPLICAS": "1"}
    with running_service(folder / "data", full_models_root, folder / "service.log", env,
                         timeout=300) as svc:
        yield svc


def job_records(data_dir: Path) -> list[Path]:
    return list((data_dir / "storage" / "jobs").glob("*.json"))


def test_posts_on_a_killed_ingress_each_end_in_one_completed_job(two_ingresses):
    svc = two_ingresses
    errors: list[tuple[int, str]] = []  # every 5xx the client saw: status, content type

    async def seen(response: httpx.Response) -> None:
        if response.status_code >= 500:
            errors.append((response.status_code, response.headers.get("content-type", "")))

    image = png_bytes(photo("coffee", (160, 120)))
    retries: list[str] = []

    def progress(update) -> None:
        if update.stage == "retrying":
            retries.append(update.message)

    async def run():
        async with AsyncClient(svc.url, max_retries=10, poll_interval=0.3,
                               event_hooks={"response": [seen]}) as client:
            posts = [asyncio.create_task(client.submit(
                image, model="tiny-rrdb", factor=2, wait=0, on_progress=progress))
                for _ in range(POSTS)]
            # Killed once a few are answered: the rest are on their way, on both replicas.
            while sum(p.done() for p in posts) < 3:
                await asyncio.sleep(0.01)
            ingresses = replica_pids("Ingress", svc.data_dir)
            assert len(ingresses) == 2
            os.kill(ingresses[0], signal.SIGKILL)
            jobs = await asyncio.gather(*posts)
            ended = await asyncio.gather(*(client.wait(job, timeout=120) for job in jobs))
            return jobs, ended

    jobs, ended = asyncio.run(run())
    print(f"retries: {retries}; 5xx answers: {errors}")  # what the kill hit, for the log
    assert len({job.id for job in jobs}) == POSTS  # each POST its own job
    assert all(job.status == "completed" for job in ended), [j.status for j in ended]
    assert len(job_records(svc.data_dir)) == POSTS  # no job made twice by a repeat
    assert not [e for e in errors if not e[1].startswith("application/json")], errors
