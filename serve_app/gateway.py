"""The engine deployments as the HTTP app sees them: typed calls over Ray Serve
DeploymentHandles, one place that knows which deployment serves which engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.ray_compat import unwrap
from upscaler.engines.models import ModelInfo
from upscaler.jobs import Engine, JobEvent, JobSpec
from upscaler.quotas import KeyQuota, RateState

STATUS_TIMEOUT_S = 5.0


class EngineGateway:
    def __init__(self, esrgan: DeploymentHandle, flux: DeploymentHandle,
                 flux_coordinator: DeploymentHandle, imagen: DeploymentHandle):
        self.esrgan = esrgan
        # Each engine's job stream: FLUX jobs are run by the coordinator over FLUX replicas.
        self._runs = {Engine.esrgan: esrgan.options(stream=True),
                      Engine.flux: flux_coordinator.options(stream=True),
                      Engine.imagen: imagen.options(stream=True)}
        self._status = {Engine.esrgan: esrgan.health, Engine.flux: flux.status,
                        Engine.imagen: imagen.status}
        self._last_status: dict[Engine, dict[str, Any]] = {}

    def run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        return self._runs[spec.engine].run.remote(spec)

    async def model_info(self, name: str | None) -> ModelInfo:
        """The ESRGAN model ``name`` (None: the default); raises UnknownModel,
        UnsupportedModel, or ServiceUnavailable when none is installed."""
        return await self.esrgan.model_info.remote(name)

    async def list_models(self) -> dict[str, Any]:
        return await self.esrgan.list_models.remote()

    async def status(self, engine: Engine) -> dict[str, Any]:
        """An engine's status. When it does not answer in time but answered before and its
        replica is alive, every slot is taken by image work: its last answer, marked busy."""
        try:
            status = await asyncio.wait_for(self._status[engine].remote(), STATUS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - busy or down: report it, never fail health
            cause = unwrap(exc)
            if engine in self._last_status and not isinstance(cause, RayActorError):
                return {**self._last_status[engine], "state": "busy"}
            return {"installed": False, "error": f"no answer: {type(cause).__name__}",
                    "message": f"the {engine.value} deployment is not answering yet; retry "
                    "shortly"}
        self._last_status[engine] = status
        return status

    def device(self, engine: Engine) -> str | None:
        """The device an engine last said it runs on (None before it answered)."""
        return self._last_status.get(engine, {}).get("device")


class QuotaClient:
    """The quota keeper (one replica for every Ingress), as typed calls."""

    def __init__(self, keeper: DeploymentHandle):
        self.keeper = keeper

    async def hit(self, bucket: str, per_minute: int) -> RateState:
        return await self.keeper.hit.remote(bucket, per_minute)

    async def admit(self, bucket: str, job_id: str, engine: str, output_mp: float,
                    quota: KeyQuota, max_open_per_engine: int, metered: bool) -> None:
        await self.keeper.admit.remote(bucket, job_id, engine, output_mp, quota,
                                       max_open_per_engine, metered)

    async def release(self, bucket: str, job_id: str, engine: str) -> None:
        await self.keeper.release.remote(bucket, job_id, engine)
