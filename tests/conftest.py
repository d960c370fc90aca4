"""Shared fixtures: real model files on disk and a real running service on 127.0.0.1."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from model_factory import write_compact, write_rrdb  # noqa: E402

from serve_app.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DAT = "DAT_light_x4"
# Small limits so the limit tests send small requests.
TEST_LIMITS = {"UPSCALER_MAX_UPLOAD_MB": "2", "UPSCALER_MAX_INPUT_PIXELS": "4000000",
               "UPSCALER_MAX_OUTPUT_PIXELS": "20000000"}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """A models folder holding the real DAT-light x4 (pulled through `upscaler models pull`'s
    code, cached between runs) and two tiny random models in the real on-disk formats."""
    from serve_app.model_pull import pull

    root = tmp_path_factory.mktemp("models")
    settings = Settings(data_dir=root.parent / "pull-data", models_dir=root)
    pull([DAT], settings, log=lambda *_: None)
    folder = root / "upscale_models"
    write_rrdb(folder / "tiny-rrdb.pth")
    write_compact(folder / "tiny-compact.pth")
    return root


@pytest.fixture(scope="session")
def upscale_models_dir(models_root) -> Path:
    return models_root / "upscale_models"


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> Image.Image:
    from skimage import data

    im = Image.fromarray(getattr(data, name)())
    return im.resize(size, Image.BICUBIC) if size else im


def png_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    top = 255.0 if max(a.max(), b.max()) > 1.5 else 1.0
    return float("inf") if mse == 0 else 10 * np.log10(top * top / mse)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    data_dir: Path
    models_dir: Path
    process: subprocess.Popen
    log_path: Path
    metrics_port: int | None = None

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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


def start_service(data_dir: Path, models_dir: Path, log_path: Path,
                  extra_env: dict[str, str] | None = None, timeout: float = 180,
                  dashboard_port: int | None = None) -> Service:
    """`upscaler serve` as a user runs it; the Ray dashboard only when a port is given."""
    port = free_port()
    dashboard = (["--dashboard-port", str(dashboard_port)] if dashboard_port
                 else ["--no-dashboard"])
    env = {**os.environ, "UPSCALER_DATA_DIR": str(data_dir), "UPSCALER_MODELS_DIR":
           str(models_dir), "UPSCALER_PORT": str(port), "UPSCALER_HOST": "127.0.0.1",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "UPSCALER_SYNC_WAIT_S": "60", **(extra_env or {})}
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", "serve", *dashboard], cwd=REPO,
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}", data_dir, models_dir, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited early:\n{service.log()[-4000:]}")
        try:
            r = httpx.get(f"{service.url}/api/health", timeout=5)
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


METRICS_INTERVAL_MS = 1000


@pytest.fixture(scope="session")
def service(tmp_path_factory, models_root) -> Iterator[Service]:
    """One real `upscaler serve` (Ray + Serve) for the HTTP tests of the session."""
    data_dir = tmp_path_factory.mktemp("service-data")
    metrics_port = free_port()
    # A 1 s metrics export interval (Ray's default is 10 s): metrics show sooner, and the
    # metrics test can outwait the gauge expiry (two intervals) quickly.
    with running_service(data_dir, models_root, data_dir / "service.log",
                         {**TEST_LIMITS, "UPSCALER_METRICS_PORT": str(metrics_port),
                          "RAY_metrics_report_interval_ms": str(METRICS_INTERVAL_MS)}) as svc:
        svc.metrics_port = metrics_port
        yield svc


@pytest.fixture
def client(service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    """Poll a job to its end; an Ingress being replaced may answer 5xx or not at all."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            r = client.get(f"/api/status/{job_id}")
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            status = r.json()
            if status["status"] in ("completed", "failed", "cancelled"):
                return status
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish: {status}")
