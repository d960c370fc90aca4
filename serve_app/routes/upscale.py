"""POST /api/upscale/{engine}: one route per EngineSpec (serve_app/engine_specs.py), made by one
factory: validate, build the engine's job, take it in (serve_app/acceptance.py), answer 200
when it finished within the wait, 202 with its status URL while it runs."""

import inspect
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.acceptance import Acceptance
from serve_app.access import CallerDep, rate_limit
from serve_app.deps import EnginesDep, Intake, PreferHeader, SettingsDep, intake
from serve_app.engine_specs import ENGINES, EngineSpec
from serve_app.idempotency import IdempotencyKeyHeader
from serve_app.openapi_docs import error_responses
from serve_app.schema_examples import UPSCALE_COMPLETED, UPSCALE_QUEUED
from serve_app.schemas import UpscaleResponse
from serve_app.submissions import wait_seconds

router = APIRouter(prefix="/api/upscale", tags=["upscale"], dependencies=[Depends(rate_limit)])
_errors = error_responses(400, 401, 403, 408, 409, 413, 415, 422, 429, 503, 507, e409={
    "error": "idempotency_key_in_use", "message": "the first request with this "
    "Idempotency-Key is still being accepted; retry shortly"})
_done = {"description": "Finished within the wait: the result's URL",
         "content": {"application/json": {"example": UPSCALE_COMPLETED}}}
_queued = {"model": UpscaleResponse, "description": "Accepted and still running: poll "
           "`statusUrl` (also in `Location`)",
           "content": {"application/json": {"example": UPSCALE_QUEUED}}}


def add_upscale_route(spec: EngineSpec) -> None:
    """POST /api/upscale/<engine>: its form, its job builder, and (synchronous engines) the
    wait a request may ask for."""
    Upload = Annotated[Intake[spec.form], Depends(intake(spec.form))]  # type: ignore[name-defined]

    async def upscale(
        accept: Annotated[Acceptance, Depends()],
        settings: SettingsDep,
        engines: EnginesDep,
        who: CallerDep,
        request: Upload,  # type: ignore[valid-type]
        prefer: PreferHeader = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> JSONResponse:
        job = await spec.build_job(settings, engines, who, request)
        wait = wait_seconds(request.form.wait, prefer, settings.sync_wait_s) \
            if spec.synchronous else 0.0
        return await accept(who, job, request, wait, idempotency_key)

    if not spec.synchronous:  # answered at once: no wait to ask for
        signature = inspect.signature(upscale)
        upscale.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for p in signature.parameters.values() if p.name != "prefer"])
    answers = {200: _done, 202: _queued} if spec.synchronous else {202: _queued}
    router.add_api_route(
        f"/{spec.engine.value}", upscale, methods=["POST"], name=f"upscale_{spec.engine.value}",
        response_model=UpscaleResponse, status_code=200 if spec.synchronous else 202,
        responses={**answers, **_errors, **error_responses(*spec.extra_errors)},
        dependencies=[Depends(check) for check in spec.prechecks], summary=spec.summary)


for _spec in ENGINES:
    add_upscale_route(_spec)
