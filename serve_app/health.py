"""The service's health: every engine's status in one answer, healthy while ESRGAN and FLUX
answer (Imagen is a cloud call; its configuration is shown, never called)."""

from __future__ import annotations

import asyncio

from serve_app.deps import Services
from serve_app.schemas import HealthResponse
from upscaler.jobs import Engine


async def collect_health(services: Services) -> HealthResponse:
    statuses = await asyncio.gather(*(services.engines.status(e) for e in Engine))
    engines = {engine.value: status for engine, status in zip(Engine, statuses, strict=True)}
    up = [name for name, info in engines.items()
          if "error" not in info and info.get("installed", True)
          and info.get("configured", True)]
    gpu = next((i for i in engines.values() if i.get("gpu_available")), {})
    healthy = all("error" not in engines[e.value] for e in (Engine.esrgan, Engine.flux))
    return HealthResponse(
        status="healthy" if healthy else "degraded",
        gpu_available=bool(gpu.get("gpu_available", False)), gpu_name=gpu.get("gpu_name"),
        gpu_memory_free=gpu.get("gpu_memory_free"), models_loaded=up,
        queue_size=services.runner.open_count(), engines=engines)
