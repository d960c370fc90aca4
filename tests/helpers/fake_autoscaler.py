"""Ray's real autoscaler on its fake multi-node provider, started and stopped here: what
``ray.cluster_utils.AutoscalingCluster`` does, without its ``ray stop --force`` (which ends every
Ray process on the machine). The head is `ray start --head --block` in a process group of its
own, with its own temp dir and ports; the "nodes" the autoscaler launches are raylets started
by the head's monitor process, found again by the session folder in their command lines."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.processes import free_port

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_TYPE = "ray.head.default"


def autoscaling_config(head_resources: dict[str, float], worker_types: dict[str, dict],
                       gcs_address: str, idle_timeout_minutes: float) -> dict[str, Any]:
    """The fake provider's example.yaml (Ray ships it in its sources, not its wheel) with these
    node types; ``gcs_address``: the provider otherwise joins nodes to port 6379."""
    return {
        "cluster_name": "fake_multinode", "max_workers": 8,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
            **worker_types},
        "head_node_type": HEAD_TYPE, "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}


@dataclass
class FakeAutoscalingCluster:
    head_resources: dict[str, float]  # CPU and custom resources of the head
    worker_types: dict[str, dict]  # node type -> {resources, min_workers, max_workers, ...}
    idle_timeout_minutes: float = 0.2
    env: dict[str, str] = field(default_factory=dict)  # for the head and its nodes
    dashboard_port: int | None = None  # the dashboard (and the state API) on 127.0.0.1
    temp_dir: Path = field(init=False)
    address: str = field(init=False)
    process: subprocess.Popen | None = field(init=False, default=None)

    def start(self, timeout: float = 90) -> None:
        # Short: Ray's socket paths live under it (107 bytes at most).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rta", dir="/tmp"))
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        config_path = self.temp_dir / "autoscaling.json"
        config_path.write_text(json.dumps(autoscaling_config(
            self.head_resources, self.worker_types, self.address, self.idle_timeout_minutes)))
        head = dict(self.head_resources)
        cmd = [RAY, "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
               f"--num-cpus={head.pop('CPU')}", f"--num-gpus={head.pop('GPU', 0)}",
               f"--resources={json.dumps(head)}", f"--autoscaling-config={config_path}",
               f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
               # Ports of its own: other clusters may run on this machine.
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        cmd += (["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
                if self.dashboard_port else ["--include-dashboard=false"])
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_USAGE_STATS_ENABLED": "0", **self.env}
        log = open(self.temp_dir / "head.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not list(self.temp_dir.glob("session_*/logs/monitor.log")):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start:\n{self.log()[-3000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        return (self.temp_dir / "head.log").read_text(errors="replace")

    def monitor_log(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in self.temp_dir.glob("session_*/logs/monitor.*"))

    def own_pids(self) -> list[int]:
        """Every process of this cluster: the head's group, and whatever names this cluster's
        temp dir in its command line (the nodes the autoscaler started, their workers)."""
        pids = []
        marker = str(self.temp_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes() or (
                        self.process is not None
                        and os.getpgid(int(entry.name)) == self.process.pid):
                    pids.append(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
        return pids

    def stop(self) -> None:
        """SIGTERM to this cluster's processes, then SIGKILL to what is left; none other."""
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            pids = self.own_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while self.own_pids() and time.monotonic() < deadline:
                time.sleep(0.3)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
