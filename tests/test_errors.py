"""One error hierarchy: every class pickles whole, maps to its HTTP status in one place, and
arrives intact when a replica raises it across a Ray handle."""

from __future__ import annotations

import pickle
import re
import shutil
import tempfile

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers.processes import free_port

from serve_app.errors import install_error_handlers, public_message
from upscaler.compute.engines.flux_files import FluxNotInstalled
from upscaler.domain.storage import StorageError
from upscaler.errors import all_error_classes

# Imported above: the classes defined outside upscaler.errors are walked too.
CLASSES = all_error_classes()


def test_every_class_has_a_status_and_a_code():
    assert len(CLASSES) >= 15
    for cls in CLASSES:
        assert 400 <= cls.http_status <= 599 and cls.default_code
        assert cls.__module__ in ("upscaler.errors", "upscaler.domain.storage",
                                  "upscaler.compute.engines.flux_files"), cls


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_pickles_with_its_fields(cls):
    err = cls("what to fix", code="a_case", retry_after=7)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and back.message == "what to fix" and back.code == "a_case"
    assert back.retry_after == 7 and back.http_status == cls.http_status
    assert pickle.loads(pickle.dumps(cls("default code"))).code == cls.default_code


def _raising_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    by_name = {cls.__name__: cls for cls in CLASSES}

    @app.get("/raise/{name}")
    async def raise_(name: str):
        raise by_name[name](f"{name} happened", retry_after=3)

    return app


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_one_place_maps_errors_to_http(cls):
    with TestClient(_raising_app()) as client:
        r = client.get(f"/raise/{cls.__name__}")
    assert r.status_code == cls.http_status
    body = r.json()
    assert body["error"] == cls.default_code
    if cls.http_status < 500:  # the request's fault: told as raised
        assert body["message"] == f"{cls.__name__} happened" and body["error_id"] is None
    else:  # the service's: in the client's terms, the details in the log under the id
        assert body["message"] == public_message(cls.http_status, cls.default_code)
        assert re.fullmatch(r"[0-9a-f]{12}", body["error_id"])
    assert r.headers["retry-after"] == "3"


def test_internal_errors_are_500_and_the_service_stays_up():
    app = _raising_app()

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
        assert r.status_code == 500 and r.json()["error"] == "internal_error"
        assert client.get("/raise/NotFound").status_code == 404


@pytest.mark.slow
def test_errors_raised_in_a_replica_reach_the_client_intact(monkeypatch, tmp_path):
    """Each class raised inside a Serve replica, called through a DeploymentHandle by a
    FastAPI ingress with the production handlers: the client gets its status and code."""
    import ray
    from ray import serve

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()

    @serve.deployment
    class Raiser:
        def raise_(self, name: str, code: str) -> None:
            import upscaler.compute.engines.flux  # noqa: F401 - the subclasses defined beside engines
            import upscaler.domain.storage  # noqa: F401

            cls = next(c for c in all_error_classes() if c.__name__ == name)
            raise cls(f"{name} in a replica", code=code, retry_after=5)

    @serve.deployment
    @serve.ingress()
    class Front:
        def __init__(self, raiser):
            self.raiser = raiser

        def __serve_build_asgi_app__(self) -> FastAPI:
            app = FastAPI()
            install_error_handlers(app)

            @app.get("/raise/{name}")
            async def raise_(name: str):
                await self.raiser.raise_.remote(name, f"{name.lower()}_code")

            return app

    # A short temp dir of its own: Ray's socket paths must fit 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Front.bind(Raiser.bind()), route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for cls in CLASSES:
                r = client.get(f"/raise/{cls.__name__}")
                assert r.status_code == cls.http_status, (cls, r.text)
                assert r.json()["error"] == f"{cls.__name__.lower()}_code", r.text
                if cls.http_status < 500:
                    assert r.json()["message"] == f"{cls.__name__} in a replica"
                else:
                    assert r.json()["error_id"] and "replica" not in r.json()["message"]
                assert r.headers["retry-after"] == "5"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_storage_and_flux_errors_answer_503_with_retry_after():
    """Raised outside upscaler.errors (the storage layer, the FLUX files check): the one
    handler answers them as the service's passing trouble, with their own codes."""
    with TestClient(_raising_app()) as client:
        for cls in (StorageError, FluxNotInstalled):
            r = client.get(f"/raise/{cls.__name__}")
            assert (r.status_code, r.json()["error"]) == (503, cls.default_code), r.text
            assert r.headers["retry-after"] == "3"
