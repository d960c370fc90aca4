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

from serve_app.api import create_app
from serve_app.deps import Services
from serve_app.engine_specs import graph_deployments
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
    """The graph `serve_app.app.build_graph` binds, built in this process from the same table:
    ``deployments`` by name (``ESRGAN``, ``FluxCoordinator``, ...)."""

    def __init__(self, settings: Settings):
        self.deployments: dict[str, Any] = {}
        handles: dict[str, LocalHandle] = {}
        for spec in graph_deployments():
            assert spec.deployment is not None
            self.deployments[spec.name] = spec.deployment.func_or_class(
                settings, *(handles[name] for name in spec.calls))
            handles[spec.name] = LocalHandle(self.deployments[spec.name])
        self.services: Services = build_services(settings, handles)


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
