"""GPU nodes on demand, on Ray's real autoscaler (its fake multi-node provider: "nodes" are
local raylets it launches and terminates): a CPU head and no GPU node, ESRGAN and FLUX at
min_replicas 0 on their node types, jobs and results on S3 (moto's server). An ESRGAN job makes
the autoscaler launch a small-card node and a FLUX job a big-card one; each job says `waiting
for a GPU node` meanwhile and completes; idle, the replicas go to zero and the nodes are
terminated. One cluster and one `upscaler serve --ray-address` for the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.api import download, eventually, upload, wait_for_job
from helpers.config import FLUX_DUMMY_MAX_DELTA_E
from helpers.fake_autoscaler import FakeAutoscalingCluster
from helpers.images import photo, png_bytes
from helpers.processes import REPO, free_port

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.slow

SMALL, BIG = "gpu_24gb", "gpu_80gb"  # the node types' resources, as in cluster.yaml
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
       "AWS_CONFIG_FILE": "/nonexistent"}
# No token (the test's own cluster on loopback); FLUX's tiny files offline.
CLUSTER_ENV = {**AWS, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "UPSCALER_CPU_THREADS": "1",
               # A node silent this long is terminated (the default, 30 s, only slower).
               "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10"}
IDLE_S = 3  # Serve's downscale_delay_s, then the autoscaler's idle timeout (0.1 min)


@pytest.fixture(scope="module")
def s3_url() -> Iterator[tuple[str, dict]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(),
                                            verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
               "key": "testing", "secret": "testing", "skip_instance_cache": True}
    import fsspec

    bucket = f"b{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **options).mkdir(bucket)
    try:
        yield f"s3://{bucket}/upscaler", options
    finally:
        server.stop()


def serve_config(port: int, data_dir: Path, models_dir: Path, storage: tuple[str, dict]) -> dict:
    """ESRGAN and FLUX at zero on their node types; one proxy (several cannot share a port
    on one machine); short idle times."""
    zero = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1,
            "target_ongoing_requests": 1, "upscale_delay_s": 0, "downscale_delay_s": IDLE_S}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 300},
        "applications": [{
            "name": "upscaler", "route_prefix": "/", "import_path": "serve_app.app:build_app",
            "args": {"device": "cpu", "data_dir": str(data_dir), "models_dir": str(models_dir),
                     "storage_url": storage[0], "storage_options": storage[1],
                     "esrgan_node_type": SMALL, "flux_node_type": BIG,
                     "esrgan_min_replicas": 0, "esrgan_max_replicas": 1,
                     "flux_min_replicas": 0, "flux_max_replicas": 1, "flux_idle_s": IDLE_S,
                     "flux_min_tile_size": 32, "gpu_node_start_s": 30,
                     "flux_tile_max_delta_e": FLUX_DUMMY_MAX_DELTA_E,
                     "esrgan_cold_start_s": 10, "flux_cold_start_s": 20,
                     "ingress_drain_s": 2},
            "deployments": [{"name": "ESRGAN", "autoscaling_config": zero},
                            {"name": "FLUX", "autoscaling_config": zero}]}]}


@dataclass
class Autoscaled:
    cluster: FakeAutoscalingCluster
    url: str
    dashboard: str
    service: subprocess.Popen
    log_path: Path

    def nodes(self) -> list[dict]:
        """Every node the cluster had, alive or dead, from Ray's state API."""
        from ray.util.state import list_nodes

        return [vars(n) for n in list_nodes(address=self.dashboard, detail=True)]

    def launched(self, resource: str, state: str | None = None) -> set[str]:
        """The nodes (of a state) whose type declares ``resource``: the GPU node types."""
        return {n["node_id"] for n in self.nodes() if n["resources_total"].get(resource)
                and state in (None, n["state"])}

    def replica_nodes(self, deployment: str, state: str | None = None) -> set[str]:
        """Where the deployment's replicas ran (of a state: ALIVE, DEAD)."""
        from ray.util.state import list_actors

        filters = [("class_name", "=", f"ServeReplica:upscaler:{deployment}")]
        if state:
            filters.append(("state", "=", state))
        return {a.node_id for a in list_actors(address=self.dashboard, filters=filters)}

    def kill_node(self, node_id: str) -> int:
        """SIGKILL every process of one fake node (the provider starts each node's processes
        with its id in their environment), as a machine that is gone."""
        marker = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
        killed = 0
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(
                        b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
            except (OSError, ProcessLookupError):
                continue
        return killed


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory, full_models_root, s3_url) -> Iterator[Autoscaled]:
    folder = tmp_path_factory.mktemp("autoscale")
    dashboard_port = free_port()
    cluster = FakeAutoscalingCluster(
        # The head: CPU only (the Ingress, the coordinator, Serve's controller and proxy).
        head_resources={"CPU": 4},
        worker_types={
            "gpu_small": {"resources": {"CPU": 2, "GPU": 1, SMALL: 1}, "node_config": {},
                          "min_workers": 0, "max_workers": 1},
            "gpu_big": {"resources": {"CPU": 2, "GPU": 1, BIG: 1}, "node_config": {},
                        "min_workers": 0, "max_workers": 1}},
        idle_timeout_minutes=0.1, env=CLUSTER_ENV, dashboard_port=dashboard_port)
    cluster.start()
    service = None
    try:
        port = free_port()
        config = folder / "serve.yaml"
        config.write_text(yaml.safe_dump(serve_config(port, folder / "data", full_models_root,
                                                      s3_url)))
        log_path = folder / "serve.log"
        env = {**os.environ, **CLUSTER_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
        with open(log_path, "ab") as log:
            service = subprocess.Popen(
                [sys.executable, "-m", "upscaler.commands.cli", "serve", "--ray-address",
                 cluster.address, "--config", str(config)], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        setup = Autoscaled(cluster, url, f"http://127.0.0.1:{dashboard_port}", service,
                           log_path)

        def healthy() -> bool:
            assert service.poll() is None, log_path.read_text()[-4000:]
            try:
                return httpx.get(f"{url}/api/health", timeout=5).json()["status"] == "healthy"
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        eventually(healthy, timeout=150, every=1)
        yield setup
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGINT)  # serve.shutdown(), then it exits
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
        cluster.stop()


def waits_for_a_node_then_completes(client: httpx.Client, job_id: str) -> dict:
    status = client.get(f"/api/status/{job_id}").json()
    assert status["status_detail"] == "waiting for a GPU node", status
    assert status["estimated_time"] >= 30  # gpu_node_start_s is in it
    done = wait_for_job(client, job_id, timeout=180)
    assert done["status"] == "completed", done
    return done


def test_gpu_nodes_come_for_jobs_and_go_when_idle(autoscaled):
    started = time.monotonic()
    assert autoscaled.launched(SMALL) == autoscaled.launched(BIG) == set()
    with httpx.Client(base_url=autoscaled.url, timeout=120) as client:
        health = client.get("/api/health").json()
        assert health["engines"]["esrgan"]["state"] == "scaled_to_zero"
        assert "waiting for a GPU node" in health["engines"]["flux"]["message"]

        # ESRGAN: a small-card node is launched, its replica runs there.
        answer = upload(client, png_bytes(photo("coffee", (40, 30))), model="tiny-rrdb", wait=0)
        assert answer.status_code == 202, answer.text
        assert answer.json()["estimatedTime"] >= 40  # node start + ESRGAN's start
        done = waits_for_a_node_then_completes(client, answer.json()["jobId"])
        assert download(client, done["output_url"]).size == (160, 120)
        small = autoscaled.launched(SMALL)
        assert len(small) == 1 and autoscaled.launched(BIG) == set()
        assert autoscaled.replica_nodes("ESRGAN") == small
        esrgan_s = time.monotonic() - started

        # FLUX: a big-card node (its ESRGAN pre-upscale may bring a small one again).
        answer = upload(client, png_bytes(photo("coffee", (64, 48))), engine="flux",
                        tile_size=64, tile_padding=16, mask_blur=4, steps=2, denoise=0.3,
                        upscale_factor=2, upscale_model="tiny-rrdb", wait=0)
        assert answer.status_code == 202, answer.text
        done = waits_for_a_node_then_completes(client, answer.json()["jobId"])
        assert download(client, done["output_url"]).size == (128, 96)
        big = autoscaled.launched(BIG)
        assert len(big) == 1 and autoscaled.replica_nodes("FLUX") == big
        assert autoscaled.replica_nodes("ESRGAN") <= autoscaled.launched(SMALL)
        flux_s = time.monotonic() - started - esrgan_s

        # Idle: no replica, no GPU node (each terminated by the autoscaler).
        def all_gone() -> bool:
            return not (autoscaled.replica_nodes("ESRGAN", "ALIVE")
                        or autoscaled.replica_nodes("FLUX", "ALIVE")
                        or autoscaled.launched(SMALL, "ALIVE")
                        or autoscaled.launched(BIG, "ALIVE"))

        eventually(all_gone, timeout=90, every=2)
        # The autoscaler logs its removals in its loop's event summary, after it has ended
        # the nodes: a node gone may not be in the log yet.
        eventually(lambda: all(f"Removing 1 nodes of type {kind} (idle)"
                               in autoscaled.cluster.monitor_log()
                               for kind in ("gpu_small", "gpu_big")), timeout=30, every=1)
        health = client.get("/api/health").json()
        assert health["status"] == "healthy"
        assert health["engines"]["flux"]["state"] == "scaled_to_zero"
    print(json.dumps({"esrgan_job_from_zero_s": round(esrgan_s, 1),
                      "flux_job_from_zero_s": round(flux_s, 1),
                      "to_zero_nodes_s": round(time.monotonic() - started - esrgan_s - flux_s,
                                               1)}))


def test_a_lost_gpu_node_is_replaced_for_its_job(autoscaled):
    """No spare node: the small-card node running an ESRGAN job is lost mid-job; the job says
    it waits for a GPU node until the autoscaler has replaced it (max_workers 1: only once the
    lost one is terminated), then runs again there and completes once."""
    with httpx.Client(base_url=autoscaled.url, timeout=120) as client:
        before = autoscaled.launched(SMALL)
        answer = upload(client, png_bytes(photo("coffee", (768, 576))), model="tiny-rrdb",
                        wait=0)
        assert answer.status_code == 202, answer.text
        job = answer.json()["jobId"]
        # Mid-job: its replica on the new node has started it.
        eventually(lambda: client.get(f"/api/status/{job}").json()["status"] == "processing",
                   timeout=90, every=0.2)
        [lost] = autoscaled.replica_nodes("ESRGAN", "ALIVE")
        assert lost in autoscaled.launched(SMALL) - before
        assert autoscaled.kill_node(lost) > 0
        seen: set[str | None] = set()

        def ended() -> bool:
            status = client.get(f"/api/status/{job}").json()
            seen.add(status.get("status_detail"))
            return status["status"] in ("completed", "failed")

        eventually(ended, timeout=180, every=1)
        done = client.get(f"/api/status/{job}").json()
        assert done["status"] == "completed" and done["attempts"] >= 2, done  # run again
        # What it waited for: the lost node's replica starting again somewhere, or (once the
        # GCS has the node dead and until its replacement joins) a GPU node.
        assert seen & {"waiting for a GPU node", "waiting for its engine to start"}, seen
        print(json.dumps({"node_loss_attempts": done["attempts"],
                          "waits_seen": sorted(map(str, seen))}))
        # Run again on the replacement: a new small-card node, launched after the loss.
        replaced = autoscaled.launched(SMALL) - before - {lost}
        assert len(replaced) == 1 and autoscaled.replica_nodes("ESRGAN") & replaced
        assert download(client, done["output_url"]).size == (3072, 2304)
