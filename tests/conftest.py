"""Fixtures and hooks only (the helpers are in tests/helpers/): model folders (tiny models in
the real on-disk formats; the real DAT-light for the slow tier alone), a fake Vertex AI on
127.0.0.1, the whole graph in this process (fast), and a real running `upscaler serve` (slow)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# tests/ on sys.path for `helpers` (pytest's prepend import mode puts it there too).
sys.path.insert(0, str(Path(__file__).parent))

from helpers.config import (  # noqa: E402
    FAST_STALE,
    FLUX_DUMMY_MAX_DELTA_E,
    FLUX_ENV,
    METRICS_INTERVAL_MS,
    TEST_LIMITS,
    VERTEX_DEADLINE_S,
    WEBHOOK_SECRET,
    settings_from_env,
    vertex_env,
)
from helpers.fake_vertex import FakeVertex, write_service_account  # noqa: E402
from helpers.flux_factory import write_flux_models  # noqa: E402
from helpers.local_graph import local_client  # noqa: E402
from helpers.model_factory import REAL_DAT, write_test_models  # noqa: E402
from helpers.processes import ONE_THREAD, free_port  # noqa: E402
from helpers.service import Service, create_key, running_service  # noqa: E402

from upscaler.settings import Settings  # noqa: E402

if ONE_THREAD:
    import torch

    torch.set_num_threads(1)
    os.environ.update(ONE_THREAD)

# Every Ray cluster a test starts inherits this: Serve's controller wakes every 0.5 s instead
# of 0.1 s, which cuts an idle cluster's CPU from ~0.35 to ~0.17 of a core on this 2-core
# machine, where two clusters run beside the other tests. Still far inside every test's waits.
os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")


# Minutes each of the longest slow groups takes here (their clusters' start-ups and failures).
LONGEST_GROUPS = {"test_autoscale": 4.5, "test_restart": 3.5, "test_cluster": 3.5,
                  "test_rolling_deploy": 2.5, "test_control_plane": 2, "test_object_store": 2,
                  "test_serve_run": 1.5, "test_flux": 1, "test_errors": 1, "test_engine": 1,
                  "test_memory": 1, "test_cluster_tls": 1}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items) -> None:
    """`make test` runs the tests that start Ray (marked slow) on two xdist workers: those of
    the one session service as one group (it starts once, on one worker), every other
    module's as a group of its own (module fixtures start once), so two clusters at most run
    at once. The session service's group goes first, as the longest, then the others longest
    first; run without xdist, it
    goes last, so its idle cluster (a quarter of a core here) slows no test that starts its
    own."""
    def uses_service(item: pytest.Item) -> bool:
        return "service" in getattr(item, "fixturenames", ())

    for item in items:
        if item.get_closest_marker("slow"):
            group = "service" if uses_service(item) else item.path.stem
            item.add_marker(pytest.mark.xdist_group(group))
    with_service = [i for i in items if uses_service(i)]
    # The longest groups next (a stable sort), so no worker is left with one at the end.
    others = sorted((i for i in items if not uses_service(i)),
                    key=lambda i: -LONGEST_GROUPS.get(i.path.stem, 0))
    items[:] = (with_service + others if os.environ.get("PYTEST_XDIST_WORKER")
                else others + with_service)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """A models folder of ESRGAN models written here in the real on-disk formats (tiny RRDB
    and Compact, DAT-light with random weights): nothing downloaded."""
    root = tmp_path_factory.mktemp("models")
    write_test_models(root / "upscale_models")
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
def real_models_root(tmp_path_factory, full_models_root) -> Path:
    """Slow tier only: the full set plus the real DAT-light x4, pulled through `upscaler
    models pull`'s code (the network on a cold cache; cached between runs)."""
    from upscaler.commands.model_pull import pull

    root = tmp_path_factory.mktemp("real-models")
    for sub in full_models_root.iterdir():
        if sub.name != "upscale_models":
            (root / sub.name).symlink_to(sub.resolve())
    folder = root / "upscale_models"
    folder.mkdir()
    for model in (full_models_root / "upscale_models").iterdir():
        (folder / model.name).symlink_to(model.resolve())
    settings = Settings(data_dir=root.parent / "pull-data", models_dir=root)
    pull([REAL_DAT], settings, log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def vertex(tmp_path_factory) -> Iterator[FakeVertex]:
    fake = FakeVertex(slow_seconds=VERTEX_DEADLINE_S)
    fake.key_file = tmp_path_factory.mktemp("gcp") / "sa.json"
    fake.service_account = write_service_account(fake.key_file)
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def app(tmp_path_factory, full_models_root, vertex):
    """The whole graph in this process (no Ray): ESRGAN, FLUX (tiny) and Imagen (fake
    Vertex), with the test limits. Tests leave it as they found it."""
    data = tmp_path_factory.mktemp("app-data")
    settings = settings_from_env({**TEST_LIMITS, **vertex_env(vertex)}, data_dir=data,
                                 models_dir=full_models_root, flux_min_tile_size=32,
                                 flux_tile_max_delta_e=FLUX_DUMMY_MAX_DELTA_E,
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


@pytest.fixture(scope="session")
def service(tmp_path_factory, real_models_root, vertex) -> Iterator[Service]:
    """One real `upscaler serve` (Ray + Serve) for the end-to-end tests: every engine (two
    FLUX replicas, Imagen against the fake Vertex, the real DAT-light), API keys on, the
    default pixel caps with a 2 MB upload cap, fast heartbeats and upload timeouts for the
    failure tests."""
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
        with running_service(data_dir, real_models_root, data_dir / "service.log", env,
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
