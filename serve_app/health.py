"""The service's health: every engine's status in one answer, healthy while ESRGAN and FLUX
answer (Imagen is a cloud call; its configuration is shown, never called).

The whole service's detail (every tenant's open jobs, each engine's status with the Google
Cloud project, GPU) is an operator's: an admin key's, or anyone's when keys are off. Any other
key sees its own open jobs and whether each engine is ready, nothing about other tenants."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from serve_app.gateway import EngineGateway
from serve_app.runner import JobRunner
from serve_app.schemas import HealthResponse
from upscaler.domain.contracts import EngineStatus
from upscaler.domain.jobs import Engine
from upscaler.domain.keys import Caller


def sees_the_whole_service(who: Caller) -> bool:
    return who.admin or who.key_id is None  # an admin key, or keys off (loopback, no tenants)


async def collect_health(gateway: EngineGateway, runner: JobRunner, who: Caller,
                         critical: Collection[Engine]) -> HealthResponse:
    """Healthy while every engine in ``critical`` answers."""
    statuses = await asyncio.gather(*(gateway.status(e) for e in Engine))
    engines = {engine.value: status for engine, status in zip(Engine, statuses, strict=True)}
    up = [name for name, status in engines.items() if status.ready]
    gpu = next((s for s in engines.values() if s.gpu_available), EngineStatus())
    healthy = all(engines[e.value].answered for e in critical)
    if not sees_the_whole_service(who):
        return HealthResponse(
            status="healthy" if healthy else "degraded", scope="key",
            gpu_available=bool(gpu.gpu_available), models_loaded=up,
            queue_size=runner.open_count(key_id=who.key_id),
            engines={name: {"ready": name in up} for name in engines})
    return HealthResponse(scope="service",
        status="healthy" if healthy else "degraded",
        gpu_available=bool(gpu.gpu_available), gpu_name=gpu.gpu_name,
        gpu_memory_free=gpu.gpu_memory_free, models_loaded=up,
        queue_size=runner.open_count(),
        engines={name: status.as_json() for name, status in engines.items()})
