"""POST /api/upscale/{esrgan,flux,imagen}: validate, create the job, answer (200 when it
finished within the wait, 202 with its status URL while it runs)."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.deps import Intake, PreferHeader, Services, ServicesDep, intake
from serve_app.presenters import upscale_response
from serve_app.schemas import (
    ErrorResponse,
    EsrganUpscaleForm,
    FluxUpscaleForm,
    ImagenUpscaleForm,
    UpscaleResponse,
)
from serve_app.submissions import esrgan_job, flux_job, imagen_job, require_flux, wait_seconds
from upscaler.jobs import JobRecord

router = APIRouter(prefix="/api/upscale", tags=["upscale"])
_errors = {code: {"model": ErrorResponse} for code in (413, 415, 422)}


async def _submit(services: Services, job: JobRecord, data: bytes, wait: float) -> JSONResponse:
    job = await services.runner.submit(job, data, wait)
    ahead = services.runner.open_count(job.engine) - 1
    estimate = services.estimator.estimate(job, ahead, services.engines.device(job.engine))
    return upscale_response(job, estimate)


@router.post("/esrgan", response_model=UpscaleResponse, status_code=200,
             responses={202: {"model": UpscaleResponse}, **_errors},
             summary="Upscale with an ESRGAN-family model (seconds)")
async def upscale_esrgan(
    services: ServicesDep,
    request: Annotated[Intake[EsrganUpscaleForm], Depends(intake(EsrganUpscaleForm))],
    prefer: PreferHeader = None,
) -> JSONResponse:
    job = await esrgan_job(services, request)
    wait = wait_seconds(request.form.wait, prefer, services.settings.sync_wait_s)
    return await _submit(services, job, request.data, wait)


async def _flux_installed(services: ServicesDep) -> None:
    await require_flux(services)


@router.post("/flux", response_model=UpscaleResponse, status_code=202,
             responses={**_errors, 503: {"model": ErrorResponse}},
             summary="Ultimate SD Upscale with FLUX.1-dev (minutes; always asynchronous)")
async def upscale_flux(
    services: ServicesDep,
    _installed: Annotated[None, Depends(_flux_installed)],
    request: Annotated[Intake[FluxUpscaleForm], Depends(intake(FluxUpscaleForm))],
) -> JSONResponse:
    job = await flux_job(services, request)
    return await _submit(services, job, request.data, 0.0)


@router.post("/imagen", response_model=UpscaleResponse, status_code=200,
             responses={202: {"model": UpscaleResponse}, 413: {"model": ErrorResponse},
                        422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                        502: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
             summary="Upscale with Imagen on Vertex AI (a cloud call)")
async def upscale_imagen(
    services: ServicesDep,
    request: Annotated[Intake[ImagenUpscaleForm], Depends(intake(ImagenUpscaleForm))],
    prefer: PreferHeader = None,
) -> JSONResponse:
    job = await imagen_job(services, request)
    wait = wait_seconds(request.form.wait, prefer, services.settings.sync_wait_s)
    return await _submit(services, job, request.data, wait)
