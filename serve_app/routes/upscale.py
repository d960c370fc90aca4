"""POST /api/upscale/{esrgan,flux,imagen}: validate, create the job, answer (200 when it
finished within the wait, 202 with its status URL while it runs)."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.access import CallerDep, admit, rate_limit, retention_s
from serve_app.deps import Intake, PreferHeader, Services, ServicesDep, intake
from serve_app.idempotency import Claim, IdempotencyKeyHeader, claim
from serve_app.openapi_docs import error_responses
from serve_app.presenters import upscale_response
from serve_app.schema_examples import UPSCALE_COMPLETED, UPSCALE_QUEUED
from serve_app.schemas import (
    EsrganUpscaleForm,
    FluxUpscaleForm,
    ImagenUpscaleForm,
    UpscaleResponse,
)
from serve_app.submissions import esrgan_job, flux_job, imagen_job, require_flux, wait_seconds
from serve_app.webhook_submit import subscription
from upscaler.jobs import JobRecord
from upscaler.keys import Caller, quota_bucket

router = APIRouter(prefix="/api/upscale", tags=["upscale"], dependencies=[Depends(rate_limit)])
_errors = error_responses(400, 401, 403, 408, 409, 413, 415, 422, 429, 503, 507, e409={
    "error": "idempotency_key_in_use", "message": "the first request with this "
    "Idempotency-Key is still being accepted; retry shortly"})
_done = {"description": "Finished within the wait: the result's URL",
         "content": {"application/json": {"example": UPSCALE_COMPLETED}}}
_queued = {"model": UpscaleResponse, "description": "Accepted and still running: poll "
           "`statusUrl` (also in `Location`)",
           "content": {"application/json": {"example": UPSCALE_QUEUED}}}


async def _submit(services: Services, who: Caller, job: JobRecord, request: Intake,
                  wait: float, idempotency_key: str | None) -> JSONResponse:
    job.retention_s = retention_s(services, who)
    first: Claim | None = None
    if idempotency_key is not None:  # a repeat is answered from the first request's job
        found = await claim(services, who, idempotency_key, job.engine.value, request, job,
                            job.retention_s)
        if isinstance(found, JSONResponse):
            return found
        first = found
    try:
        job.webhooks = await subscription(services.settings, request.form, services.webhooks,
                                          services.keys, who)
        await admit(services, who, job)  # before anything is stored
        # Asked before the job starts one: an engine at zero replicas adds its start.
        cold_start = services.settings.flux_cold_start_s \
            if await services.engines.scaled_to_zero(job.engine) else 0.0
        try:
            job = await services.runner.submit(job, request.take_data(), wait)
        except BaseException:
            await services.quotas.release(quota_bucket(who.key_id), job.job_id,
                                          job.engine.value)
            raise
    except BaseException:
        if first is not None:
            await first.failed(services, job)
        raise
    ahead = services.runner.open_count(job.engine) - 1
    estimate = services.estimator.estimate(job, ahead, services.engines.device(job.engine))
    response = upscale_response(job, estimate + cold_start)
    if first is not None:
        await first.accepted(services, job, response.status_code)
    return response


@router.post("/esrgan", response_model=UpscaleResponse, status_code=200,
             responses={200: _done, 202: _queued, **_errors},
             summary="Upscale with an ESRGAN-family model (seconds)")
async def upscale_esrgan(
    services: ServicesDep,
    who: CallerDep,
    request: Annotated[Intake[EsrganUpscaleForm], Depends(intake(EsrganUpscaleForm))],
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    job = await esrgan_job(services, request)
    wait = wait_seconds(request.form.wait, prefer, services.settings.sync_wait_s)
    return await _submit(services, who, job, request, wait, idempotency_key)


async def _flux_installed(services: ServicesDep) -> None:
    await require_flux(services)


@router.post("/flux", response_model=UpscaleResponse, status_code=202,
             responses={202: _queued, **_errors},
             summary="Ultimate SD Upscale with FLUX.1-dev (minutes; always asynchronous)")
async def upscale_flux(
    services: ServicesDep,
    who: CallerDep,
    _installed: Annotated[None, Depends(_flux_installed)],
    request: Annotated[Intake[FluxUpscaleForm], Depends(intake(FluxUpscaleForm))],
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    job = await flux_job(services, request)
    return await _submit(services, who, job, request, 0.0, idempotency_key)


@router.post("/imagen", response_model=UpscaleResponse, status_code=200,
             responses={200: _done, 202: _queued, **_errors,
                        **error_responses(502, 504)},
             summary="Upscale with Imagen on Vertex AI (a cloud call)")
async def upscale_imagen(
    services: ServicesDep,
    who: CallerDep,
    request: Annotated[Intake[ImagenUpscaleForm], Depends(intake(ImagenUpscaleForm))],
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    job = await imagen_job(services, who, request)
    wait = wait_seconds(request.form.wait, prefer, services.settings.sync_wait_s)
    return await _submit(services, who, job, request, wait, idempotency_key)
