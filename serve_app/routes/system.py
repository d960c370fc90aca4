"""Health, the installed models, and the bare address."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, RedirectResponse

from serve_app.access import optional_caller, rate_limit
from serve_app.deps import ServicesDep
from serve_app.health import collect_health
from serve_app.openapi_docs import error_responses
from serve_app.schema_examples import HEALTH, MODELS
from serve_app.schemas import HealthResponse, LivenessResponse
from upscaler.keys import Caller

router = APIRouter()


@router.get("/api/health", response_model=HealthResponse | LivenessResponse,
            summary="Service health",
            description="Open to anyone as a liveness check (`status` alone); the detail "
            "(engines, GPU, models, queue) only with an API key when keys are on.",
            responses={503: {"model": HealthResponse,
                             "description": "degraded: an engine deployment does not answer",
                             "content": {"application/json": {"example": {
                                 **HEALTH, "status": "degraded", "models_loaded": ["esrgan"]}}}
                             }})
async def health(services: ServicesDep,
                 who: Annotated[Caller | None, Depends(optional_caller)]) -> JSONResponse:
    body = await collect_health(services)
    # 503 until the engines answer: container and load-balancer health checks wait for it.
    status_code = 200 if body.status == "healthy" else 503
    if who is None:  # keys on, none given: alive or not, and nothing about the inside
        return JSONResponse(LivenessResponse(status=body.status).model_dump(),
                            status_code=status_code)
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code)


@router.get("/api/models", summary="Installed super-resolution models",
            dependencies=[Depends(rate_limit)],
            responses={200: {"description": "The ESRGAN engine's models and its default",
                             "content": {"application/json": {"example": MODELS}}},
                       **error_responses(401, 403, 429)})
async def models(services: ServicesDep) -> dict[str, Any]:
    return {"esrgan": await services.engines.list_models()}


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")  # a person opening the bare address gets the docs
