"""The production deployment graph in one process, without Ray: the real engine deployment
classes behind stand-ins for DeploymentHandles, the real Ingress services and FastAPI app,
driven through Starlette's TestClient. Like Ray Serve's local testing mode, it tests the
deployments' and the app's logic in seconds; what only a cluster shows (pickling across
handles, replicas dying, rollouts) is tested against a real `upscaler serve`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from deployments.esrgan import EsrganDeployment
from deployments.flux import FluxCoordinator, FluxDeployment
from deployments.imagen import ImagenDeployment
from deployments.quotas import QuotaKeeper
from serve_app.api import create_app
from serve_app.deps import Services
from serve_app.ingress import build_services
from upscaler.settings import Settings


class LocalHandle:
    """``handle.method.remote(*args)`` and ``handle.options(stream=True)`` on a local object:
    an awaitable (a coroutine, so it can be cancelled like a Serve call), or the async
    generator itself for streams. Sync methods run in a thread, as Serve runs them."""

    def __init__(self, target: Any, stream: bool = False):
        self._target, self._stream = target, stream

    def options(self, stream: bool = False) -> LocalHandle:
        return LocalHandle(self._target, stream)

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._target, name), self._stream)


class _LocalMethod:
    def __init__(self, fn: Any, stream: bool):
        self.fn, self.stream = fn, stream

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self.stream or inspect.iscoroutinefunction(self.fn):
            return self.fn(*args, **kwargs)
        return asyncio.to_thread(self.fn, *args, **kwargs)


class LocalGraph:
    """The graph `serve_app.app.build_graph` binds, built in this process."""

    def __init__(self, settings: Settings):
        self.esrgan = EsrganDeployment.func_or_class(settings)
        self.flux = FluxDeployment.func_or_class(settings)
        self.coordinator = FluxCoordinator.func_or_class(settings, LocalHandle(self.esrgan),
                                                         LocalHandle(self.flux))
        self.imagen = ImagenDeployment.func_or_class(settings)
        self.quotas = QuotaKeeper.func_or_class(settings)
        self.services: Services = build_services(
            settings, LocalHandle(self.esrgan), LocalHandle(self.flux),
            LocalHandle(self.coordinator), LocalHandle(self.imagen), LocalHandle(self.quotas))


@contextmanager
def local_client(settings: Settings) -> Iterator[TestClient]:
    """A client of the whole graph in this process (``client.graph``); leaving it stops the
    job runner as a replica's shutdown does."""
    graph = LocalGraph(settings)
    # A loopback name: with keys off the app answers no other Host (DNS rebinding).
    with TestClient(create_app(graph.services), raise_server_exceptions=False,
                    base_url="http://localhost") as client:
        client.graph = graph  # type: ignore[attr-defined]
        yield client
