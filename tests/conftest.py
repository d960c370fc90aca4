"""Shared fixtures: real model files on disk, a fake Vertex AI on 127.0.0.1, the whole graph in
this process (fast), and a real running `upscaler serve` (slow)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
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

from fake_vertex import FakeVertex, write_service_account  # noqa: E402
from flux_factory import write_flux_models  # noqa: E402
from local_graph import local_client  # noqa: E402
from model_factory import write_compact, write_rrdb  # noqa: E402

from upscaler.settings import Settings  # noqa: E402

# Two xdist workers on two cores: one torch thread in each test process and its in-process
# graphs (two each would oversubscribe the cores); a started service keeps its own default.
ONE_THREAD = {"UPSCALER_CPU_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}
if ONE_THREAD:
    import torch

    torch.set_num_threads(1)
    os.environ.update(ONE_THREAD)

REPO = Path(__file__).resolve().parent.parent
DAT = "DAT_light_x4"
# Small limits so the limit tests send small requests.
TEST_LIMITS = {"UPSCALER_MAX_UPLOAD_MB": "2", "UPSCALER_MAX_INPUT_PIXELS": "4000000",
               "UPSCALER_MAX_OUTPUT_PIXELS": "20000000"}
# FLUX in seconds: small tiles allowed; never the hub.
FLUX_ENV = {"UPSCALER_FLUX_MIN_TILE_SIZE": "32", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}
# The session service's webhook signing secret (its receivers are on 127.0.0.1, allowed).
WEBHOOK_SECRET = "whsec_" + "dGVzdHMtb25seS13ZWJob29rLXNlY3JldC0zMmJ5dGVz"
# Vertex's deadline and per-call timeout, short so retried failures end in seconds.
VERTEX_DEADLINE_S = 3


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items) -> None:
    """`make test` runs the tests that start Ray (marked slow) on two xdist workers: those of
    the one session service as one group (it starts once, on one worker), every other
    module's as a group of its own (module fixtures start once), so two clusters at most run
    at once. The session service's group goes first, as the longest; run without xdist, it
    goes last, so its idle cluster (a quarter of a core here) slows no test that starts its
    own."""
    def uses_service(item: pytest.Item) -> bool:
        return "service" in getattr(item, "fixturenames", ())

    for item in items:
        if item.get_closest_marker("slow"):
            group = "service" if uses_service(item) else item.path.stem
            item.add_marker(pytest.mark.xdist_group(group))
    with_service = [i for i in items if uses_service(i)]
    others = [i for i in items if not uses_service(i)]
    items[:] = (with_service + others if os.environ.get("PYTEST_XDIST_WORKER")
                else others + with_service)


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


@pytest.fixture(scope="session")
def full_models_root(tmp_path_factory, models_root) -> Path:
    """The ESRGAN models plus a tiny FLUX set (the GGUF transformer in diffusers' layout)."""
    root = tmp_path_factory.mktemp("full-models")
    (root / "upscale_models").symlink_to(models_root / "upscale_models")
    return write_flux_models(root)


@pytest.fixture(scope="session")
def vertex(tmp_path_factory) -> Iterator[FakeVertex]:
    fake = FakeVertex(slow_seconds=VERTEX_DEADLINE_S)
    fake.key_file = tmp_path_factory.mktemp("gcp") / "sa.json"
    fake.service_account = write_service_account(fake.key_file)
    yield fake
    fake.close()


def vertex_env(vertex: FakeVertex) -> dict[str, str]:
    return {"UPSCALER_VERTEX_API_ENDPOINT": vertex.url,
            "UPSCALER_GCP_CREDENTIALS_FILE": str(vertex.key_file),
            "UPSCALER_IMAGEN_DEADLINE_S": str(VERTEX_DEADLINE_S),
            "UPSCALER_IMAGEN_CALL_TIMEOUT_S": "1"}


def settings_from_env(env: dict[str, str], **fields) -> Settings:
    """Settings as a service started with these UPSCALER_* variables has them."""
    values = {k.removeprefix("UPSCALER_").lower(): v for k, v in env.items()
              if k.startswith("UPSCALER_")}
    return Settings(**{**values, **fields})


@pytest.fixture(scope="session")
def app(tmp_path_factory, full_models_root, vertex):
    """The whole graph in this process (no Ray): ESRGAN, FLUX (tiny) and Imagen (fake
    Vertex), with the test limits. Tests leave it as they found it."""
    data = tmp_path_factory.mktemp("app-data")
    settings = settings_from_env({**TEST_LIMITS, **vertex_env(vertex)}, data_dir=data,
                                 models_dir=full_models_root, flux_min_tile_size=32,
                                 sync_wait_s=60, device="cpu")
    with local_client(settings) as client:
        yield client


@pytest.fixture(scope="session")
def bare_app(tmp_path_factory, models_root):
    """The graph with ESRGAN models only, no FLUX files and no Google credentials."""
    data = tmp_path_factory.mktemp("bare-data")
    settings = settings_from_env(TEST_LIMITS, data_dir=data, models_dir=models_root,
                                 sync_wait_s=60, device="cpu")
    with local_client(settings) as client:
        yield client


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> Image.Image:
    from skimage import data

    im = Image.fromarray(getattr(data, name)())
    return im.resize(size, Image.BICUBIC) if size else im


def png_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def upload(client, data: bytes, engine: str = "esrgan", field: str = "file",
           filename: str = "photo.png", headers: dict | None = None, **fields):
    """POST an image to an upscale route as a form (fields sent as strings)."""
    return client.post(f"/api/upscale/{engine}", files={field: (filename, data, "image/png")},
                       data={k: str(v) for k, v in fields.items()}, headers=headers)


def download(client, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200, r.text
    im = Image.open(io.BytesIO(r.content))
    im.load()
    return im


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
            [sys.executable, "-m", "serve_app.cli", "serve", *dashboard, *tls_args], cwd=REPO,
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


METRICS_INTERVAL_MS = 1000
# Heartbeats and staleness in seconds, for the tests of dying replicas and restarts.
FAST_STALE = {"UPSCALER_HEARTBEAT_S": "1", "UPSCALER_STALE_AFTER_S": "6",
              "UPSCALER_INGRESS_DRAIN_S": "5"}


def create_key(data_dir: Path, name: str, *options: str) -> str:
    """A key made the way an operator makes one: `upscaler keys create` (its last line)."""
    out = subprocess.run([sys.executable, "-m", "serve_app.cli", "keys", "create", name,
                          "--data-dir", str(data_dir), *options], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def service(tmp_path_factory, full_models_root, vertex) -> Iterator[Service]:
    """One real `upscaler serve` (Ray + Serve) for the end-to-end tests: every engine (two
    FLUX replicas, Imagen against the fake Vertex), API keys on, the default pixel caps
    with a 2 MB upload cap, fast heartbeats and upload timeouts for the failure tests."""
    data_dir = tmp_path_factory.mktemp("service-data")
    metrics_port = free_port()
    api_key = create_key(data_dir, "e2e")
    admin_key = create_key(data_dir, "ops", "--admin")
    # Ray's files (the logs the secrets test reads) in a short folder of this session's:
    # Ray's socket paths must fit 107 bytes.
    ray_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # A 1 s metrics export interval (Ray's default is 10 s): metrics show sooner, and the
    # metrics test can outwait the gauge expiry (two intervals) quickly.
    env = {"UPSCALER_MAX_UPLOAD_MB": TEST_LIMITS["UPSCALER_MAX_UPLOAD_MB"], **FLUX_ENV,
           **vertex_env(vertex), **FAST_STALE, "UPSCALER_AUTH": "keys",
           "UPSCALER_UPLOAD_IDLE_TIMEOUT_S": "2",
           # The bomb flood sends 16 uploads at once with one key.
           "UPSCALER_MAX_CONCURRENT_UPLOADS_PER_KEY": "16",
           "UPSCALER_WEBHOOK_SECRET": WEBHOOK_SECRET, "UPSCALER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
           "UPSCALER_WEBHOOK_BACKOFF_S": "0.2", "UPSCALER_WEBHOOK_TIMEOUT_S": "5",
           "UPSCALER_FLUX_MIN_REPLICAS": "2", "UPSCALER_FLUX_MAX_REPLICAS": "2",
           "UPSCALER_METRICS_PORT": str(metrics_port), "RAY_TMPDIR": str(ray_dir),
           "RAY_metrics_report_interval_ms": str(METRICS_INTERVAL_MS)}
    try:
        with running_service(data_dir, full_models_root, data_dir / "service.log", env,
                             timeout=300) as svc:
            svc.metrics_port, svc.api_key, svc.ray_dir = metrics_port, api_key, ray_dir
            svc.admin_key = admin_key
            yield svc
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture
def client(service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


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


def eventually(check, timeout: float = 30, every: float = 0.2) -> None:
    """Until ``check()`` is true (what a service reports a few seconds late, from a cache)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(every)


def wait_for_job(client, job_id: str, timeout: float = 300, headers: dict | None = None) -> dict:
    """Poll a job to its end; an Ingress being replaced may answer 5xx or not at all."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            r = client.get(f"/api/status/{job_id}", headers=headers)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            status = r.json()
            if status["status"] in ("completed", "failed", "cancelled"):
                return status
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish: {status}")
