"""A job whose engine has no replica (scaled to zero) says what it waits for, with the wait in
its estimate: a GPU node while no live node can run the engine (the autoscaler launches one),
then the engine's start. In-process graph; the cluster (Serve's replica counts, each node's
resources) is what the test says it is. The real autoscaler: tests/test_autoscale.py."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers.api import upload, wait_for_job
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client

from serve_app.engine_specs import ENGINE_SPECS
from serve_app.engine_wait import ENGINE_START, GPU_NODE, Placement, engine_wait
from serve_app.gateway import ClusterView
from upscaler.domain.jobs import Engine
from upscaler.settings import Settings

HEAD = {"CPU": 4.0, "cpu_node": 1.0}
SMALL_GPU = {"CPU": 8.0, "GPU": 1.0, "gpu_24gb": 1.0}
BIG_GPU = {"CPU": 16.0, "GPU": 1.0, "gpu_80gb": 1.0}


def test_the_wait_follows_the_nodes():
    flux = Placement.of({"num_gpus": 1, "num_cpus": 4, "resources": {"gpu_80gb": 0.001}}, 120)
    assert flux.needs == {"GPU", "gpu_80gb"}
    assert engine_wait(flux, [HEAD, SMALL_GPU], 240) == (wait := engine_wait(flux, [HEAD], 240))
    assert (wait.reason, wait.seconds) == (GPU_NODE, 360)
    assert engine_wait(flux, [HEAD, BIG_GPU], 240).reason == ENGINE_START
    assert engine_wait(flux, None, 240).seconds == 120  # nodes unknown: the start only
    # No GPU asked for (a CPU machine): any node runs it.
    assert engine_wait(Placement.of({"num_gpus": 0}, 30), [HEAD], 240).reason == ENGINE_START


def test_engines_scale_to_zero_where_their_settings_say():
    """ESRGAN only with min_replicas 0 (elsewhere no replica means its node was lost);
    FLUX always (configs set its min_replicas 0 without the setting)."""
    esrgan, flux = ENGINE_SPECS[Engine.esrgan], ENGINE_SPECS[Engine.flux]
    assert esrgan.placement(Settings(device="cpu")) is None
    placement = esrgan.placement(Settings(device="cpu", esrgan_min_replicas=0,
                                          esrgan_node_type="gpu_24gb", esrgan_cold_start_s=7))
    assert placement == Placement(frozenset({"GPU", "gpu_24gb"}), 7)
    assert flux.placement(Settings(device="cpu", flux_node_type="gpu_80gb")).needs == {
        "GPU", "gpu_80gb"}


def view(replicas: dict[str, int], nodes: list[dict[str, float]]) -> ClusterView:
    return ClusterView(lambda: replicas, lambda: nodes)


@pytest.fixture
def autoscaled(tmp_path, models_root):
    """ESRGAN at min_replicas 0 on its node type, its jobs held until the test lets go."""
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path, models_dir=models_root,
                                 device="cpu", esrgan_min_replicas=0,
                                 esrgan_node_type="gpu_24gb", esrgan_cold_start_s=20,
                                 gpu_node_start_s=200)
    with local_client(settings) as client:
        esrgan = client.graph.deployments["ESRGAN"]
        run, release = esrgan.run, threading.Event()

        async def held(spec, data=None):
            await asyncio.to_thread(release.wait, 60)
            async for event in run(spec, data):
                yield event

        def asked(*args):
            raise AssertionError("a question to ESRGAN would start a replica")

        esrgan.run, esrgan.list_models, esrgan.model_info = held, asked, asked
        client.release = release
        try:
            yield client
        finally:
            release.set()


def test_a_job_waits_for_a_gpu_node_then_for_its_engine(autoscaled):
    client, engines = autoscaled, autoscaled.graph.services.engines
    engines.cluster = view({"ESRGAN": 0}, [HEAD])
    health = client.get("/api/health").json()
    assert health["status"] == "healthy", health  # idle at zero is not degraded
    assert GPU_NODE in health["engines"]["esrgan"]["message"]

    # The model questions are answered on this node (models at hand), not by a replica.
    answer = upload(client, png_bytes(photo("coffee", (32, 24))), model="tiny-rrdb", wait=0)
    assert answer.status_code == 202, answer.text
    assert answer.json()["estimatedTime"] >= 220  # node start + engine start
    job = answer.json()["jobId"]
    status = client.get(f"/api/status/{job}").json()
    assert status["status_detail"] == GPU_NODE and status["estimated_time"] >= 220

    engines.cluster = view({"ESRGAN": 0}, [HEAD, SMALL_GPU])  # the node joined
    status = client.get(f"/api/status/{job}").json()
    assert status["status_detail"] == ENGINE_START
    assert 20 <= status["estimated_time"] < 200

    engines.cluster = view({"ESRGAN": 1}, [HEAD, SMALL_GPU])  # its replica runs
    assert client.get(f"/api/status/{job}").json()["status_detail"] is None
    client.release.set()
    done = wait_for_job(client, job, timeout=60)
    assert done["status"] == "completed" and done["status_detail"] is None
