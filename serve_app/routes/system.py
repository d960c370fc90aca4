"""Health, the installed models, and the plan of an upload before it is sent."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from serve_app.access import optional_caller, rate_limit
from serve_app.deps import EnginesDep, OutlookDep, RunnerDep, SettingsDep
from serve_app.engine_specs import ENGINE_SPECS, ENGINES
from serve_app.health import collect_health
from serve_app.openapi_docs import error_responses
from serve_app.schema_examples import HEALTH, MODELS, PLAN
from serve_app.schemas import HealthResponse, LivenessResponse, PlanResponse
from serve_app.submissions import plan_upload
from upscaler.domain.jobs import Engine
from upscaler.domain.keys import ANONYMOUS, Caller
from upscaler.errors import UpscalerError

router = APIRouter()
CRITICAL = tuple(spec.engine for spec in ENGINES if spec.critical)


@router.get("/api/health", response_model=HealthResponse | LivenessResponse,
            summary="Service health",
            description="Open to anyone as a liveness check (`status` alone). With an API "
            "key: the key's own open jobs (`queue_size`) and each engine's readiness "
            "(`scope: key`); with an admin key (`upscaler keys create NAME --admin`), or "
            "with keys off, the whole service's detail: every tenant's open jobs, each "
            "engine's status, GPU (`scope: service`).",
            responses={503: {"model": HealthResponse,
                             "description": "degraded: an engine deployment does not answer",
                             "content": {"application/json": {"example": {
                                 **HEALTH, "status": "degraded", "models_loaded": ["esrgan"]}}}
                             }})
async def health(engines: EnginesDep, runner: RunnerDep,
                 who: Annotated[Caller | None, Depends(optional_caller)]) -> JSONResponse:
    body = await collect_health(engines, runner, who or ANONYMOUS, CRITICAL)
    # 503 until the engines answer: container and load-balancer health checks wait for it.
    status_code = 200 if body.status == "healthy" else 503
    if who is None:  # keys on, none given: alive or not, and nothing about the inside
        return JSONResponse(LivenessResponse(status=body.status).model_dump(),
                            status_code=status_code)
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code)


@router.get("/api/plan", response_model=PlanResponse, dependencies=[Depends(rate_limit)],
            summary="The output an upload would give, before sending it",
            description="`width` and `height` of the input in pixels, `engine`, and the "
            "engine's sizing fields as query parameters (`upscale_factor`, `target_dpi`, "
            "`target_width_inches`, `target_height_inches`, `target_width`, `target_height`, "
            "`crop_to_target`, `bleed`, `bleed_unit`, and `output_format`: JPEG's 65,535 px "
            "side), checked as the upload would be: the same print-size rule, limits and 4xx "
            "answers.",
            responses={200: {"description": "The plan",
                             "content": {"application/json": {"example": PLAN}}},
                       **error_responses(401, 403, 422, 429)})
async def plan(settings: SettingsDep, engines: EnginesDep, outlook: OutlookDep, request: Request,
               width: Annotated[int, Query(ge=1, le=1_000_000)],
               height: Annotated[int, Query(ge=1, le=1_000_000)],
               engine: Engine = Engine.esrgan) -> PlanResponse:
    spec, scale = ENGINE_SPECS[engine], None
    if spec.model_passes:
        try:  # the default model's scale: what the pixels computed follow
            scale = (await engines.model_info(None)).scale
        except UpscalerError:
            scale = None  # no model installed: the plan without them
    return plan_upload(settings, outlook, width, height, engine, spec.form, request.query_params,
                       scale)


@router.get("/api/models", summary="Installed super-resolution models",
            dependencies=[Depends(rate_limit)],
            responses={200: {"description": "The ESRGAN engine's models and its default",
                             "content": {"application/json": {"example": MODELS}}},
                       **error_responses(401, 403, 429)})
async def models(engines: EnginesDep) -> dict[str, Any]:
    return {"esrgan": (await engines.list_models()).as_json()}
