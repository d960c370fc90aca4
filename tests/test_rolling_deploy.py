"""`serve deploy` of the production config (serve_config.yaml) to a local cluster, then of a
changed one, which rolls out without dropping the job in flight: `ray start --head` on 127.0.0.1
with two GPUs as Ray's scheduler sees them, deploy, check the GPU reservations, change ESRGAN's
replicas and resources and the Ingress's resources (both are replaced), deploy again,
`serve status`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.api import wait_for_job
from helpers.images import photo, png_bytes
from helpers.processes import REPO, free_port, wait_http_ok
from helpers.service import create_key

from serve_app.deploy_options import CPU_NODE_RESOURCE

BIN = Path(sys.executable).parent


def run(*args: str, env: dict, timeout: float = 180) -> str:
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def gpus_in_use(gcs: int, env: dict, expected: float) -> float:
    """GPUs the cluster's actors hold, from `ray status` (waits for replicas to settle)."""
    deadline = time.monotonic() + 90
    while True:
        out = run("ray", "status", f"--address=127.0.0.1:{gcs}", env=env)
        used = float(re.search(r"([\d.]+)/2\.0 GPU", out).group(1))
        if used == expected or time.monotonic() > deadline:
            return used
        time.sleep(2)


@pytest.mark.slow
def test_serve_deploy_rolls_out_without_dropping_jobs(tmp_path, models_root):
    gcs, dashboard, http_port = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    address = f"http://127.0.0.1:{dashboard}"
    # The production config; only where things live and where HTTP listens are changed.
    # The GPUs are logical (`ray start --num-gpus`): replicas reserve them, and the engines
    # run on the CPU as torch finds no CUDA here.
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=http_port)
    config["applications"][0]["args"].update(
        models_dir=str(models_root), data_dir=str(tmp_path / "data"),
        storage_url=str(tmp_path / "data" / "storage"),
        keys_file=str(tmp_path / "data" / "keys.json"))
    api_key = create_key(tmp_path / "data", "rollout")  # the config has keys on
    deps = {d["name"]: d for d in config["applications"][0]["deployments"]}
    # One node that is the head (the CPU side's resource) and both GPU node types.
    args = config["applications"][0]["args"]
    declared = {CPU_NODE_RESOURCE: 1, args["esrgan_node_type"]: 2, args["flux_node_type"]: 2}
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))

    # --block keeps `ray start` in the foreground: stopping it stops this cluster only
    # (`ray stop` would stop every Ray cluster on the machine, other tests' too).
    # Its own temp dir (short: Ray's socket paths must fit 107 bytes): the cluster's address
    # file stays out of /tmp/ray, where other clusters' ray.init() would look for it.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    with open(tmp_path / "ray.log", "wb") as log:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--temp-dir={ray_tmp}",
             f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             "--num-cpus=12", "--num-gpus=2", f"--resources={json.dumps(declared)}",
             "--disable-usage-stats"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The dashboard's REST API is what `serve deploy` talks to.
        wait_http_ok(f"{address}/api/version", 120, head, tmp_path / "ray.log")
        run("serve", "deploy", str(path), "--address", address, env=env)
        url = f"http://127.0.0.1:{http_port}"
        wait_http_ok(f"{url}/api/health", 240)
        # FLUX is scaled to zero until a FLUX job comes (it holds no card); the one ESRGAN
        # replica holds a quarter of one.
        assert gpus_in_use(gcs, env, 0.25) == 0.25

        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {api_key}"}) as client:
            r = client.post("/api/upscale/esrgan", data={"tile_size": "64", "wait": "0"},
                            files={"file": ("p.png", png_bytes(photo("coffee", (96, 64))))})
            assert r.status_code == 202, r.text
            job_id = r.json()["jobId"]
            while client.get(f"/api/status/{job_id}").json()["status"] != "processing":
                time.sleep(0.2)

            # More ESRGAN replicas and other resources: Serve replaces the ESRGAN replica.
            # The Ingress, which drives the job, is replaced too: it finishes the job first.
            deps["Ingress"]["ray_actor_options"]["num_cpus"] = 0.4
            deps["ESRGAN"]["autoscaling_config"].update(min_replicas=2, initial_replicas=2,
                                                        max_replicas=2)
            deps["ESRGAN"]["ray_actor_options"]["num_cpus"] = 1
            path.write_text(yaml.safe_dump(config))
            run("serve", "deploy", str(path), "--address", address, env=env)

            status = wait_for_job(client, job_id, timeout=300)
            assert status["status"] == "completed", status  # the job in flight survived
            deadline = time.monotonic() + 240
            while True:
                out = run("serve", "status", "--address", address, env=env)
                state = yaml.safe_load(out)["applications"]["upscaler"]["deployments"]["ESRGAN"]
                running = state["replica_states"].get("RUNNING", 0)
                if state["status"] == "HEALTHY" and running == 2:
                    break
                assert time.monotonic() < deadline, json.dumps(state)
                time.sleep(2)
            assert gpus_in_use(gcs, env, 0.5) == 0.5  # two ESRGAN replicas share a card
            r = client.post("/api/upscale/esrgan", data={"model": "tiny-rrdb"},
                            files={"file": ("p.png", png_bytes(photo("rocket", (24, 24))))})
            assert r.status_code == 200 and r.json()["status"] == "completed"
            # A new Ingress took the new job; the old one had finished the first (drained).
            jobs = tmp_path / "data" / "storage" / "jobs"
            owners = [json.loads((jobs / f"{i}.json").read_text())["lease_owner"]
                      for i in (job_id, r.json()["jobId"])]
            assert owners[0] != owners[1]
    finally:
        subprocess.run([str(BIN / "serve"), "shutdown", "-y", "--address", address], env=env,
                       capture_output=True, timeout=120)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
