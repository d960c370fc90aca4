"""`serve run serve_config.cpu.yaml`: Ray Serve's own CLI starts the graph from the config file
and it answers a real ESRGAN job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.images import photo, png_bytes
from helpers.processes import REPO, free_port, wait_http_ok


@pytest.mark.slow
def test_serve_run_cpu_config(tmp_path, models_root):
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "UPSCALER_DATA_DIR": str(tmp_path / "data"),
           "UPSCALER_MODELS_DIR": str(models_root), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}
    serve = Path(sys.executable).with_name("serve")
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(serve), "run", str(path)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/api/health", 180, proc, tmp_path / "serve.log")
        r = httpx.post(f"{url}/api/upscale/esrgan", timeout=120,
                       files={"file": ("p.png", png_bytes(photo("rocket", (32, 24))))},
                       data={"model": "tiny-rrdb", "upscale_factor": "2"})
        assert r.status_code == 200 and r.json()["outputSize"] == {"width": 64, "height": 48}
    finally:
        proc.send_signal(signal.SIGTERM)  # stops serve and the local cluster it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow  # starts Ray
def test_upscaler_serve_stops_with_the_reason_when_storage_is_unusable(tmp_path, models_root):
    """A wrong storage location ends the start in seconds (exit 1) naming the setting,
    instead of a service that fails every job later."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "UPSCALER_DATA_DIR": str(tmp_path / "data"),
           "UPSCALER_MODELS_DIR": str(models_root), "UPSCALER_PORT": str(free_port()),
           "UPSCALER_STORAGE_URL": str(blocker / "storage"), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "upscaler.commands.cli", "serve",
                           "--no-dashboard"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "upscaler serve: job storage" in proc.stderr and "is not usable" in proc.stderr
    assert "UPSCALER_STORAGE_URL" in proc.stderr
