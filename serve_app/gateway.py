"""The engine deployments as the HTTP app sees them: typed calls over Ray Serve
DeploymentHandles, one place that knows which deployment serves which engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from upscaler.compute.engines.models import ModelInfo
from upscaler.domain.contracts import EngineStatus, ModelList
from upscaler.domain.jobs import Engine, JobEvent, JobSpec, JobWork
from upscaler.domain.quotas import KeyQuota, RateState, UsageFigures
from upscaler.ray_support import serve_replica_counts, unwrap

T = TypeVar("T")
STATUS_TIMEOUT_S = 5.0
REPLICAS_FRESH_S = 3.0  # Serve's replica counts, asked of its controller at most this often
STATUS_FRESH_S = 2.0  # an engine's status this recent is answered without asking again
MODELS_FRESH_S = 10.0  # the ESRGAN model list, likewise (model files change rarely)


@dataclass
class _Cached(Generic[T]):
    value: T
    at: float
    refreshing: asyncio.Task | None = None


class EngineGateway:
    """Job streams go straight to the deployments. Questions (status, models) are answered
    from what the deployments said last, refreshed in the background once it is a few seconds
    old: a replica whose every slot holds image work then never makes a request (health, an
    upload's model check) wait for it."""

    def __init__(self, esrgan: DeploymentHandle, runs: Mapping[Engine, DeploymentHandle],
                 statuses: Mapping[Engine, DeploymentHandle],
                 scales_to_zero: Mapping[Engine, str] | None = None):
        """``esrgan`` answers the model questions; each engine's jobs stream from its ``runs``
        handle and its ``status()`` is its ``statuses`` handle's (serve_app/engine_specs.py);
        ``scales_to_zero``: the deployment an idle engine may have no replica of."""
        self.esrgan = esrgan
        self._runs = {engine: handle.options(stream=True) for engine, handle in runs.items()}
        self._statuses = dict(statuses)
        self._scales_to_zero = dict(scales_to_zero or {})
        self._status: dict[Engine, _Cached[EngineStatus]] = {}
        self._models: _Cached[ModelList] | None = None
        self._replicas: _Cached[dict[str, int] | None] | None = None

    def run(self, spec: JobSpec, data: bytes | None = None) -> AsyncIterator[JobEvent]:
        return self._runs[spec.engine].run.remote(spec, data)

    # --- models --------------------------------------------------------------------------
    async def list_models(self) -> ModelList:
        if self._models is None:
            self._models = _Cached(await self.esrgan.list_models.remote(), time.monotonic())
        elif time.monotonic() - self._models.at > MODELS_FRESH_S:
            self._refresh_models()
        return self._models.value

    def _refresh_models(self) -> None:
        async def refresh() -> None:
            assert self._models is not None
            try:
                self._models = _Cached(await self.esrgan.list_models.remote(), time.monotonic())
            except Exception:  # noqa: BLE001 - keep what was known; asked again later
                self._models.refreshing = None

        if self._models is not None and self._models.refreshing is None:
            self._models.refreshing = asyncio.get_running_loop().create_task(refresh())

    async def model_info(self, name: str | None) -> ModelInfo:
        """The ESRGAN model ``name`` (None: the default). A name the list does not hold (new,
        unknown, unloadable, or no model installed) is asked of a replica, which raises
        UnknownModel, UnsupportedModel or ServiceUnavailable."""
        if (listed := (await self.list_models()).find(name)) is not None:
            return listed
        info = await self.esrgan.model_info.remote(name)
        self._refresh_models()  # it exists after all: the list is behind
        return info

    # --- status --------------------------------------------------------------------------
    async def running_replicas(self, deployment: str) -> int | None:
        """Running replicas of one of this application's deployments, as Serve's controller
        counts them; None when it cannot say. Like status: once known, the last count is
        answered and refreshed in the background when a few seconds old, so no upload waits
        on the controller."""
        if self._replicas is None:
            self._replicas = _Cached(await self._ask_replicas(), time.monotonic())
        elif (time.monotonic() - self._replicas.at > REPLICAS_FRESH_S
              and self._replicas.refreshing is None):
            self._replicas.refreshing = asyncio.get_running_loop().create_task(
                self._refresh_replicas())
        counts = self._replicas.value
        return None if counts is None else counts.get(deployment, 0)

    @staticmethod
    async def _ask_replicas() -> dict[str, int] | None:
        try:
            return await asyncio.to_thread(serve_replica_counts)
        except Exception:  # noqa: BLE001 - outside Serve, or the controller is busy
            return None

    async def _refresh_replicas(self) -> None:
        self._replicas = _Cached(await self._ask_replicas(), time.monotonic())

    async def scaled_to_zero(self, engine: Engine) -> bool:
        """No replica runs this engine now (autoscaled to zero): the next job starts one."""
        deployment = self._scales_to_zero.get(engine)
        return deployment is not None and await self.running_replicas(deployment) == 0

    async def status(self, engine: Engine) -> EngineStatus:
        """An engine's status: the last answer when recent, else asked again (in the
        background when there is an answer to give meanwhile). An engine scaled to zero is
        not asked: a question would start a replica (and hold a GPU) for nothing."""
        if await self.scaled_to_zero(engine):
            # Installed as a replica last said (files rarely go); a replica started for a job
            # without them fails it with the command to run.
            last = self._status.get(engine)
            installed = last is None or last.value.installed is not False
            return EngineStatus(installed=installed, replicas=0, state="scaled_to_zero",
                                message=f"no {engine.value} replica is running (scaled to "
                                "zero when idle); the next job starts one")
        cached = self._status.get(engine)
        if cached is None:
            return await self._ask_status(engine)
        if time.monotonic() - cached.at > STATUS_FRESH_S and cached.refreshing is None:
            cached.refreshing = asyncio.get_running_loop().create_task(
                self._ask_status(engine))
        return cached.value

    async def _ask_status(self, engine: Engine) -> EngineStatus:
        """Ask the deployment. No answer in time from a live replica means every slot holds
        image work: its last answer, marked busy. A dead replica is an error until Serve has
        replaced it."""
        last = self._status.get(engine)
        try:
            status: EngineStatus = await asyncio.wait_for(
                self._statuses[engine].status.remote(), STATUS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - busy or down: report it, never fail health
            cause = unwrap(exc)
            if last is not None and last.value.answered and not isinstance(
                    cause, RayActorError):
                status = last.value.model_copy(update={"state": "busy"})
            else:
                status = EngineStatus(installed=False,
                                      error=f"no answer: {type(cause).__name__}",
                                      message=f"the {engine.value} deployment is not "
                                      "answering yet; retry shortly")
        self._status[engine] = _Cached(status, time.monotonic())
        return status

    def device(self, engine: Engine) -> str | None:
        """The device an engine last said it runs on (None before it answered)."""
        cached = self._status.get(engine)
        return None if cached is None else cached.value.device


class QuotaClient:
    """The quota keeper (one replica for every Ingress), as typed calls."""

    def __init__(self, keeper: DeploymentHandle):
        self.keeper = keeper

    async def hit(self, bucket: str, per_minute: int) -> RateState:
        return await self.keeper.hit.remote(bucket, per_minute)

    async def admit(self, bucket: str, job_id: str, engine: str, work: JobWork,
                    quota: KeyQuota, max_open_per_engine: int, metered: bool) -> None:
        await self.keeper.admit.remote(bucket, job_id, engine, work, quota,
                                       max_open_per_engine, metered)

    async def release(self, bucket: str, job_id: str, engine: str) -> None:
        await self.keeper.release.remote(bucket, job_id, engine)

    async def stored(self, bucket: str, job_id: str, nbytes: int) -> None:
        await self.keeper.stored.remote(bucket, job_id, nbytes)

    async def unstored(self, bucket: str, job_id: str) -> None:
        await self.keeper.unstored.remote(bucket, job_id)

    async def figures(self, bucket: str, quota: KeyQuota) -> UsageFigures:
        return await self.keeper.figures.remote(bucket, quota)
