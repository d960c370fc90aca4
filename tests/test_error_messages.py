"""A failure on the service's side (5xx) is told in the client's terms: no storage URL, model
path, host or project in the answer, and an error_id that the log line with the details
carries (serve_app/errors.py). Each case provoked in-process, with the real graph."""

from __future__ import annotations

import logging
import re

import pytest
from helpers.api import upload
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client

# An absolute path (two levels or more) or a URL anywhere in an answer.
PATH_OR_URL = re.compile(r"(?<![\w`.])/[\w.-]+/[\w.-]+|\w+://")
GOOD_PNG = png_bytes(photo("rocket", (24, 24)))


@pytest.fixture
def service_log(caplog):
    """The records of the service's logger (it does not propagate to the root logger)."""
    logger = logging.getLogger("ray.serve")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ray.serve")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def details_logged(log, error_id: str) -> str:
    [line] = [r.getMessage() for r in log.records if f"error_id={error_id}" in r.getMessage()]
    return line


def assert_generic(r, status: int, code: str, hidden: list[str], log,
                   logged: list[str] | None = None) -> str:
    """The answer is the case's, says nothing of ``hidden`` (or any path or URL), and its
    error_id leads to a log line that has the details (``logged``, else ``hidden``). Returns
    that line."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    for secret in hidden:
        assert secret not in r.text
    assert not PATH_OR_URL.search(body["message"]), body["message"]
    error_id = body.get("error_id") or re.search(r"error id (\w+)", body["message"]).group(1)
    line = details_logged(log, error_id)
    assert all(detail in line for detail in logged or hidden), line
    return line


def test_flux_not_installed_names_no_model_path(bare_app, models_root, service_log):
    r = upload(bare_app, GOOD_PNG, engine="flux")
    line = assert_generic(r, 503, "flux_not_installed", [str(models_root)], service_log)
    assert "flux1-dev" in line  # what is missing, for the operator
    assert "upscaler models pull flux" in r.json()["message"]  # what to run, for a local user


def test_health_names_the_missing_flux_files_without_their_folder(bare_app, models_root):
    """The engines' status in GET /api/health (keys off: the whole service's)."""
    flux = bare_app.get("/api/health").json()["engines"]["flux"]
    assert not flux["installed"] and "unet/flux1-dev-Q8_0.gguf" in flux["message"]
    assert str(models_root) not in flux["message"]
    assert not PATH_OR_URL.search(flux["message"]), flux["message"]


def test_storage_unreachable_names_no_storage_url(bare_app, monkeypatch, service_log):
    """Job storage refusing writes (a bucket's policy changed, a volume gone read-only)."""
    storage = bare_app.graph.services.store.storage
    real_open = storage.fs.open

    def refusing_open(path, mode="rb", **kwargs):
        if "w" in mode:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(storage.fs, "open", refusing_open)
    r = upload(bare_app, GOOD_PNG, model="tiny-rrdb", upscale_factor=2)
    monkeypatch.undo()
    assert_generic(r, 503, "storage_unavailable", [storage.url], service_log)
    assert r.headers["retry-after"] == "5"
    assert bare_app.get("/api/health").json()["status"] == "healthy"


def test_no_model_installed(tmp_path, service_log):
    settings = settings_from_env(TEST_LIMITS, data_dir=tmp_path / "data",
                                 models_dir=tmp_path / "no-models", device="cpu")
    with local_client(settings) as client:
        r = upload(client, GOOD_PNG)
        assert_generic(r, 503, "no_models", [str(tmp_path)], service_log,
                       logged=["DAT_light_x4"])


def test_a_failed_jobs_record_names_no_project(app, vertex, service_log):
    """A job that fails on the service's side keeps the public message (with the id) in its
    record too: Vertex's refusal named the GCP project and Google's own text."""
    vertex.reset(default="403")
    try:
        r = app.post("/api/upscale/imagen", files={"file": ("p.png", GOOD_PNG, "image/png")},
                     data={"upscale_factor": "x2"})
    finally:
        vertex.reset()
    assert_generic(r, 502, "vertex_permission", ["test-project", "aiplatform.endpoints"],
                   service_log)
    status = app.get(f"/api/status/{r.json()['jobId']}").json()
    assert status["error_code"] == "vertex_permission"
    assert "test-project" not in status["error"] and "error id" in status["error"]


def test_an_unexpected_error_is_500_with_its_traceback_logged(service_log):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve_app.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("connect to 10.1.2.3 failed for /srv/secret/path")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert_generic(r, 500, "internal_error", ["10.1.2.3", "/srv/secret/path"], service_log)
    [record] = [rec for rec in service_log.records if r.json()["error_id"] in rec.getMessage()]
    assert record.exc_info  # the traceback, in the log only
