"""Health, the installed models, and the bare address."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, RedirectResponse

from serve_app.deps import ServicesDep
from serve_app.health import collect_health
from serve_app.schemas import HealthResponse

router = APIRouter()


@router.get("/api/health", response_model=HealthResponse, summary="Service health",
            responses={503: {"model": HealthResponse,
                             "description": "degraded: an engine deployment does not answer"}})
async def health(services: ServicesDep) -> JSONResponse:
    body = await collect_health(services)
    # 503 until the engines answer: container and load-balancer health checks wait for it.
    return JSONResponse(body.model_dump(mode="json"),
                        status_code=200 if body.status == "healthy" else 503)


@router.get("/api/models", summary="Installed super-resolution models")
async def models(services: ServicesDep) -> dict[str, Any]:
    return {"esrgan": await services.engines.list_models()}


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")  # a person opening the bare address gets the docs
