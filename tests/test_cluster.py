"""The service on a real multi-node Ray cluster on this machine (tests/helpers/cluster.py: `ray
start` processes, a CPU-only head whose GCS keeps its state in Redis, GPU worker nodes with a
logical GPU, jobs on moto's S3), deployed as an operator deploys it: `upscaler serve
--ray-address` with serve_config.yaml made to fit one machine. One cluster for the module:
where the replicas run, a GPU node lost mid-job (ESRGAN re-runs, FLUX resumes from its stored
tiles, each completes once), and the GCS killed and started again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import fsspec
import httpx
import pytest
import yaml
from helpers.api import upload, wait_for_job
from helpers.cluster import LocalCluster, moto_s3, start_app
from helpers.config import FLUX_ENV, WEBHOOK_SECRET
from helpers.deploy_files import load
from helpers.images import photo, png_bytes
from helpers.processes import REPO, free_port
from helpers.webhook_receiver import WebhookReceiver

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
pytestmark = pytest.mark.slow

ENGINES = {"ESRGAN", "FLUX"}  # on GPU nodes only
CPU_SIDE = {"Ingress", "Quotas", "Imagen"}
# 64 tiles of 32 px (tests/test_restart.py), fewer steps: a minute of the tiny FLUX on a CPU.
FLUX_JOB = {"upscale_factor": "2", "tile_size": "32", "tile_padding": "16", "mask_blur": "4",
            "steps": "16", "denoise": "1.0", "upscale_model": "tiny-rrdb"}


# The GPU node types the shipped config holds each engine to: the test's GPU nodes are both.
NODE_TYPES = {load("serve_config.yaml")["applications"][0]["args"][f"{e}_node_type"]: 1
              for e in ("esrgan", "flux")}


def cluster_config(path, storage: dict, models_dir, data_dir) -> None:
    """serve_config.yaml as one machine runs it: one proxy (several cannot share a port),
    this machine's folders and moto's bucket, keys off on loopback, webhooks to a loopback
    receiver, fast leases; the GPU engines' shares of the one logical GPU of a node (FLUX
    0.75 + ESRGAN 0.25, the built-in split) and a CPU each, one replica of each, FLUX kept
    warm (min 1). Every other option (placement included) is the shipped file's."""
    config = load("serve_config.yaml")
    config["proxy_location"] = "HeadOnly"
    [app] = config["applications"]
    for arg in ("keys_file", "flux_memory_mode"):
        app["args"].pop(arg, None)
    app["args"].update({
        **storage, "auth": "none", "device": "cpu", "models_dir": str(models_dir),
        "data_dir": str(data_dir), "sync_wait_s": 60, "webhook_https_only": False,
        "webhook_allowed_hosts": ["127.0.0.1"], "webhook_backoff_s": 0.2,
        "heartbeat_s": 1, "stale_after_s": 6, "ingress_drain_s": 5, "flux_min_tile_size": 32})
    shares = {"ESRGAN": 0.25, "FLUX": 0.75}
    for d in app["deployments"]:
        actor = d.setdefault("ray_actor_options", {})
        if d["name"] in shares:
            actor.update(num_gpus=shares[d["name"]], num_cpus=1)
            d["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
    path.write_text(yaml.safe_dump(config))


class Deployed:
    def __init__(self, cluster: LocalCluster, url: str, storage: dict, receiver):
        self.cluster, self.url, self.storage, self.receiver = cluster, url, storage, receiver
        self.gpu_node = cluster.nodes[-1]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def stored(self, prefix: str) -> list[str]:
        fs = fsspec.filesystem("s3", **self.storage["storage_options"])
        root = self.storage["storage_url"].removeprefix("s3://")
        try:
            return sorted(p.removeprefix(root + "/") for p in fs.find(f"{root}/{prefix}"))
        except FileNotFoundError:
            return []


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, full_models_root) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("cluster")
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    with moto_s3() as storage:
        env = {**FLUX_ENV, "UPSCALER_WEBHOOK_SECRET": WEBHOOK_SECRET, "PYTHONPATH": str(REPO)}
        cluster = LocalCluster(env).start()
        try:
            cluster.add_gpu_node(resources=NODE_TYPES)
            config = tmp / "serve_config.yaml"
            cluster_config(config, storage, full_models_root, tmp / "data")
            port = free_port()
            start_app(cluster, config, port, tmp / "serve.log")
            yield Deployed(cluster, f"http://127.0.0.1:{port}", storage, receiver)
        finally:
            cluster.close()
            receiver.close()


def health(client: httpx.Client) -> str:
    try:
        return client.get("/api/health", timeout=10).json()["status"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "no answer"


def until(check, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(every)
    return value


def placement(deployed) -> dict[str, set[str]]:
    """Each deployment's nodes by role (Ray's state API: the alive actors' node ids)."""
    roles = {deployed.gpu_node.node_id: "gpu", deployed.cluster.head_node_id: "head"}
    placed = {d: {roles.get(n, n) for n in nodes}
              for d, nodes in deployed.cluster.actor_nodes().items()}
    print(f"placement: {placed}")
    return placed


def test_engines_run_on_the_gpu_node(deployed):
    placed = placement(deployed)
    assert set(placed) >= ENGINES | CPU_SIDE, placed
    assert all(placed[engine] == {"gpu"} for engine in ENGINES), placed


def test_the_cpu_side_runs_off_the_gpu_node(deployed):
    placed = placement(deployed)
    assert all(placed[d] == {"head"} for d in CPU_SIDE), placed


def test_a_gpu_node_lost_mid_job(deployed):
    """The GPU node dies with an ESRGAN and a FLUX job in flight; health says degraded; a
    fresh GPU node joins; the ESRGAN job runs again from its stored upload, the FLUX job
    resumes from its stored tiles (or, when no tile of it was on the lost replica, goes on
    once the new one is up); each tile is drawn once, each job ends with one result object
    and one `completed` webhook; health is healthy again."""
    cluster, rx = deployed.cluster, deployed.receiver
    with deployed.client() as client:
        flux = upload(client, png_bytes(photo("chelsea", (128, 128))), engine="flux",
                      webhook_url=rx.url("/flux"), **FLUX_JOB).json()
        until(lambda: len(deployed.stored(f"jobs/{flux['jobId']}/tiles")) >= 2, 180,
              "FLUX stored no tiles")
        # DAT-light in four windows: seconds of work, in flight when the node goes.
        esrgan = upload(client, png_bytes(photo("coffee", (128, 96))), tile_size="64",
                        wait="0", webhook_url=rx.url("/esrgan")).json()
        until(lambda: client.get(f"/api/status/{esrgan['jobId']}").json()["status"]
              == "processing", 60, "the ESRGAN job never ran")
        lost_at = time.monotonic()
        cluster.kill_node(deployed.gpu_node)
        try:
            tiles_then = len(deployed.stored(f"jobs/{flux['jobId']}/tiles"))
            until(lambda: health(client) == "degraded", 60, "health never said degraded")
            print(f"health said degraded {time.monotonic() - lost_at:.1f} s after the loss")
        finally:  # the module's next tests need a GPU node, whatever this one found
            deployed.gpu_node = cluster.add_gpu_node(resources=NODE_TYPES)
        ended = {job["jobId"]: wait_for_job(client, job["jobId"], timeout=300)
                 for job in (esrgan, flux)}
        recovered_s = time.monotonic() - lost_at
        until(lambda: health(client) == "healthy", 120, "health did not recover")
    rerun, resumed = ended[esrgan["jobId"]], ended[flux["jobId"]]
    assert rerun["status"] == "completed" and rerun["attempts"] == 2, rerun
    assert resumed["status"] == "completed", resumed
    kept, computed = resumed["stats"]["tiles_resumed"], resumed["stats"]["tiles_computed"]
    assert 1 <= tiles_then < 64 and kept + computed == 64, resumed["stats"]  # each tile once
    if kept:  # a tile was on the lost replica: the run failed, the next took the stored ones
        assert kept >= tiles_then and resumed["resumes"] >= 1, resumed
    else:  # none was: the run's next tiles waited in Serve's queue for the new replica
        assert resumed["resumes"] == 0, resumed
    assert resumed["attempts"] == 1, resumed  # a FLUX job resumes; it is never run anew
    assert deployed.stored("results") == sorted(f"results/{j}.png" for j in ended)
    for path, job_id in (("/esrgan", esrgan["jobId"]), ("/flux", flux["jobId"])):
        until(lambda p=path: rx.events(p), 30, f"no webhook at {path}")
        time.sleep(2)  # a duplicate would come within the backoff
        got = [r for r in rx.at(path) if r.verified and r.body["data"]["job_id"] == job_id]
        assert [r.body["type"] for r in got] == ["job.completed"], got
    placed = placement(deployed)
    assert all(placed[e] == {"gpu"} for e in ENGINES), placed
    print(f"node lost with {tiles_then} of 64 tiles stored -> both jobs completed: "
          f"{recovered_s:.1f} s; FLUX {kept} tiles resumed, {computed} computed")


def test_the_gcs_killed_and_back(deployed):
    """With the GCS's state in Redis, its server is SIGKILLed: status and results keep
    answering over HTTP while it is down, and a job running then completes, once, after it is
    started again."""
    cluster = deployed.cluster
    with deployed.client() as client:
        done = upload(client, png_bytes(photo("rocket", (32, 24))), model="tiny-rrdb").json()
        assert done["status"] == "completed", done
        running = upload(client, png_bytes(photo("coffee", (128, 96))), tile_size="64",
                         wait="0").json()
        until(lambda: client.get(f"/api/status/{running['jobId']}").json()["status"]
              == "processing", 60, "the job never ran")
        cluster.kill_gcs()
        down_at = time.monotonic()
        try:
            for _ in range(5):  # seconds of answers with no GCS
                status = client.get(f"/api/status/{done['jobId']}", timeout=10)
                assert status.status_code == 200 and status.json()["status"] == "completed"
                result = client.get(done["outputUrl"], timeout=10)
                assert result.status_code == 200 and result.content[:4] == b"\x89PNG"
                time.sleep(0.5)
        finally:
            cluster.restart_gcs()
        print(f"GCS down for {time.monotonic() - down_at:.1f} s")
        # Nothing of the job needs the GCS (direct actor calls, leases in S3): it runs once.
        ended = wait_for_job(client, running["jobId"], timeout=240)
        assert ended["status"] == "completed" and ended["attempts"] == 1, ended
        assert f"results/{running['jobId']}.png" in deployed.stored("results")
        # The cluster works on: a new job runs on the engines after the restart.
        r = upload(client, png_bytes(photo("rocket", (32, 24))), model="tiny-rrdb")
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        until(lambda: health(client) == "healthy", 60, "not healthy after the GCS restart")
