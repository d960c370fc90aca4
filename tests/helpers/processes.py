"""Processes and ports: the repository root commands run in, a free local port, waiting for
an HTTP answer, and finding a service's Ray replicas."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
# Two xdist workers on two cores: one torch thread in each test process and its in-process
# graphs (tests/conftest.py applies it); a started service keeps its own default.
ONE_THREAD = {"UPSCALER_CPU_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout: float, process: subprocess.Popen | None = None,
                 log_path: Path | None = None) -> None:
    """Until ``url`` answers 200; fails early if ``process`` exits (showing its log's end)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"process exited before {url} answered:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)


def replica_pids(name: str, data_dir: Path) -> list[int]:
    """Replica processes of one service (matched by the data dir in their environment)."""
    out = subprocess.run(["pgrep", "-f", rf"ServeReplica:upscaler:{name}(\.|$)"],
                         capture_output=True, text=True).stdout.split()
    pids = []
    for pid in out:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"UPSCALER_DATA_DIR={data_dir}".encode() in env:
            pids.append(int(pid))
    return pids
