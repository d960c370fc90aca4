"""A real `upscaler serve` (Ray + Serve) started as a user starts it, and API keys made as an
operator makes them (`upscaler keys create`)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers.processes import ONE_THREAD, REPO, free_port


@dataclass
class Service:
    url: str
    data_dir: Path
    models_dir: Path
    process: subprocess.Popen
    log_path: Path
    metrics_port: int | None = None
    verify: ssl.SSLContext | bool = True  # HTTPS: trusts the service's own certificate
    api_key: str | None = None  # sent by client() when the service has keys on
    admin_key: str | None = None  # an operator's key: the whole service's health detail
    ray_dir: Path | None = None  # its Ray session's files (logs), when the test chose it

    def admin(self) -> dict[str, str]:
        """Headers of the admin key, for the health detail every tenant's key is refused."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    def client(self, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        return httpx.Client(base_url=self.url, timeout=timeout, verify=self.verify,
                            headers=headers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(data_dir: Path, models_dir: Path, log_path: Path,
                  extra_env: dict[str, str] | None = None, timeout: float = 180,
                  dashboard_port: int | None = None, tls: tuple[Path, Path] | None = None,
                  token_auth: bool = False) -> Service:
    """`upscaler serve` as a user runs it; the Ray dashboard only when a port is given. Ray's
    token auth is off unless ``token_auth`` (then Ray writes its token under $HOME: give the
    service its own in ``extra_env``); ``tls`` = (certificate, key) serves HTTPS."""
    port = free_port()
    dashboard = (["--dashboard-port", str(dashboard_port)] if dashboard_port
                 else ["--no-dashboard"])
    tls_args = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    env = {**{k: v for k, v in os.environ.items() if k not in ONE_THREAD},
           "UPSCALER_DATA_DIR": str(data_dir), "UPSCALER_MODELS_DIR":
           str(models_dir), "UPSCALER_PORT": str(port), "UPSCALER_HOST": "127.0.0.1",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "UPSCALER_SYNC_WAIT_S": "60", **(extra_env or {})}
    if token_auth:
        del env["RAY_AUTH_MODE"]  # `upscaler serve`'s own default
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "upscaler.commands.cli", "serve", *dashboard, *tls_args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(f"{'https' if tls else 'http'}://127.0.0.1:{port}", data_dir, models_dir,
                      proc, log_path,
                      verify=ssl.create_default_context(cafile=str(tls[0])) if tls else True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited early:\n{service.log()[-4000:]}")
        try:
            r = httpx.get(f"{service.url}/api/health", timeout=5, verify=service.verify)
            if r.status_code == 200 and r.json()["status"] == "healthy":
                return service
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_service(service)
    raise RuntimeError(f"service did not become healthy:\n{service.log()[-4000:]}")


def stop_service(service: Service, timeout: float = 60) -> None:
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
        try:
            service.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(10)


@contextmanager
def running_service(data_dir: Path, models_dir: Path, log_path: Path,
                    extra_env: dict[str, str] | None = None, **options) -> Iterator[Service]:
    """A started service, stopped (SIGTERM) on leaving; its log tail is printed if the stop
    was not clean."""
    svc = start_service(data_dir, models_dir, log_path, extra_env, **options)
    try:
        yield svc
    finally:
        stop_service(svc)
        if svc.process.returncode not in (0, None):
            print(svc.log()[-4000:])


def create_key(data_dir: Path, name: str, *options: str) -> str:
    """A key made the way an operator makes one: `upscaler keys create` (its last line)."""
    out = subprocess.run([sys.executable, "-m", "upscaler.commands.cli", "keys", "create", name,
                          "--data-dir", str(data_dir), *options], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]
