"""Each engine's rules for turning a validated request into a job: which model, which engine
options, what the engine accepts. The routes parse and answer; this decides."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serve_app.access import check_project
from serve_app.deps import Intake, Services, output_plan
from serve_app.schemas import (
    CommonUpscaleForm,
    CropGuidance,
    EsrganUpscaleForm,
    FluxUpscaleForm,
    ImagenUpscaleForm,
    PlanResponse,
)
from upscaler.engines.imagen import choose_factor, request_image_bytes
from upscaler.engines.imagen import model_spec as imagen_model
from upscaler.errors import InvalidRequest, OutputTooLarge, ServiceUnavailable, UpstreamError
from upscaler.jobs import (
    Engine,
    EsrganParams,
    FluxParams,
    ImagenParams,
    JobParams,
    JobRecord,
    Size,
)
from upscaler.keys import Caller
from upscaler.memory import coordinator_bytes
from upscaler.metering import job_work
from upscaler.passes import plan_passes

PREFER_WAIT_RE = re.compile(r"wait=(\d+(?:\.\d+)?)")
MAX_PREFER_WAIT_S = 600.0


def wait_seconds(field: float | None, prefer: str | None, default: float) -> float:
    """How long POST waits for the job: the ``wait`` field, else RFC 7240's ``Prefer``
    (``respond-async``: not at all; ``wait=N``), else the server's default."""
    if field is not None:
        return field
    if prefer:
        if "respond-async" in prefer.lower():
            return 0.0
        if match := PREFER_WAIT_RE.search(prefer):
            return min(float(match.group(1)), MAX_PREFER_WAIT_S)
    return default


FORMS: dict[Engine, type[CommonUpscaleForm]] = {
    Engine.esrgan: EsrganUpscaleForm, Engine.flux: FluxUpscaleForm,
    Engine.imagen: ImagenUpscaleForm}
PLAN_FIELDS = ("upscale_factor", "target_dpi", "target_width_inches", "target_height_inches",
               "target_width", "target_height", "crop_to_target")


def plan_upload(services: Services, width: int, height: int, engine: Engine,
                query: Mapping[str, str], model_scale: int | None = None) -> PlanResponse:
    """An upload's plan before it is sent: the engine's own form checks the sizing fields,
    then the same rule and limit as the upload's (``deps.output_plan``); with the default
    model's ``model_scale``, the pixels it would compute (``upscaler.passes``), which its
    key would be charged and its estimate is made from."""
    unknown = sorted(set(query) - {"width", "height", "engine", *PLAN_FIELDS})
    if unknown:
        raise InvalidRequest(f"unknown parameter(s) {', '.join(unknown)}; the plan takes "
                             f"width, height, engine, {', '.join(PLAN_FIELDS)}",
                             code="unknown_field")
    try:
        form = FORMS[engine].model_validate({k: query[k] for k in PLAN_FIELDS if k in query})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    plan = output_plan(services.settings, width, height, form)
    crop = plan.crop_info
    final = Size(width=plan.final_width, height=plan.final_height)
    computed = None
    if model_scale is not None and engine is not Engine.imagen:
        s = services.settings
        computed = plan_passes(width, height, plan.output_width, plan.output_height,
                               model_scale, s.max_model_passes,
                               s.max_output_pixels).computed_pixels / 1e6
    estimate = services.estimator.estimate_output(
        engine, computed or final.width * final.height / 1e6,
        services.runner.open_count(engine), services.engines.device(engine))
    return PlanResponse(
        engine=engine.value, inputSize=Size(width=width, height=height),
        outputSize=Size(width=plan.output_width, height=plan.output_height), finalSize=final,
        scaleFactor=round(plan.scale_factor, 6), dpi=plan.dpi,
        printInches=(round(final.width / plan.dpi, 2), round(final.height / plan.dpi, 2)),
        cropInfo=CropGuidance(direction=crop.direction, amount_px=crop.amount_px,
                              amount_inches=crop.amount_inches, box=crop.box) if crop else None,
        cropApplied=plan.crop_applied, estimatedTime=estimate,
        computedMegapixels=None if computed is None else round(computed, 3))


def new_job(services: Services, intake: Intake, params: JobParams,
            model_scale: int | None = None) -> JobRecord:
    """The job, with what it will compute (``upscaler.metering``: the engines' own plans),
    which its key is charged."""
    probe, plan = intake.probe, intake.plan
    input_size = Size(width=probe.width, height=probe.height)
    return JobRecord(engine=params.engine, owner=services.runner.owner, params=params,
                     input_format=probe.format, plan=plan, input_size=input_size,
                     output_size=Size(width=plan.final_width, height=plan.final_height),
                     work=job_work(services.settings, params, input_size, plan, model_scale))


async def esrgan_job(services: Services, intake: Intake[EsrganUpscaleForm]) -> JobRecord:
    form = intake.form
    model = await services.engines.model_info(form.model)
    return new_job(services, intake, EsrganParams(
        **form.output_options(), model=model.name, tile_size=form.tile_size or None,
        use_fp16=form.use_fp16, upscale_factor=form.upscale_factor), model.scale)


async def require_flux(services: Services) -> None:
    """FLUX answers 503 with the command to run when its files are not installed (the
    missing files and the models folder go to the log, under the answer's error id)."""
    status = await services.engines.status(Engine.flux)
    if not status.get("installed"):
        missing = status.get("message") or "FLUX is not available"
        raise ServiceUnavailable(f"{missing} (models folder "
                                 f"{services.settings.resolved_models_dir})",
                                 code="flux_not_installed")


async def flux_job(services: Services, intake: Intake[FluxUpscaleForm]) -> JobRecord:
    form = intake.form
    low = services.settings.flux_min_tile_size
    if not low <= form.tile_size <= 2048 or form.tile_size % 16:
        raise InvalidRequest(f"tile_size must be a multiple of 16 between {low} and 2048 (got "
                             f"{form.tile_size})")
    need, budget = coordinator_bytes(intake.plan), services.settings.flux_coordinator_memory_bytes
    if need > budget:
        raise OutputTooLarge(f"a FLUX job of {intake.plan.output_width}x"
                             f"{intake.plan.output_height} needs {need / 2**30:.1f} GB in the "
                             f"coordinator, more than its {budget / 2**30:.1f} GB "
                             "(flux_coordinator_memory_gb); ask for a smaller output")
    model = await services.engines.model_info(form.upscale_model)
    fields = form.model_dump(exclude={"wait", "model", "upscale_model", *form.output_options()})
    return new_job(services, intake, FluxParams(**form.output_options(), **fields,
                                                upscale_model=model.name), model.scale)


async def imagen_job(services: Services, who: Caller,
                     intake: Intake[ImagenUpscaleForm]) -> JobRecord:
    form, probe, plan = intake.form, intake.probe, intake.plan
    settings = services.settings
    status = await services.engines.status(Engine.imagen)
    if not status.get("credentials_found"):
        raise UpstreamError("Imagen is not configured: no Google Cloud credentials. Set "
                            "UPSCALER_GCP_CREDENTIALS_FILE (or GOOGLE_APPLICATION_CREDENTIALS) "
                            "to a service-account key with roles/aiplatform.user",
                            code="credentials_missing")
    check_project(services, who, form.gcp_project_id, status.get("project"))
    project = form.gcp_project_id or status.get("project")
    if not project:
        raise UpstreamError("no Google Cloud project: send gcp_project_id or set "
                            "UPSCALER_GCP_PROJECT_ID", code="project_missing")
    # Vertex's documented limits, checked before any call.
    model = imagen_model(form.model or settings.imagen_model)
    factor = choose_factor(model, probe.width, probe.height, plan.output_width,
                           plan.output_height,
                           None if form.has_target_size else int(form.plan_factor))
    await asyncio.to_thread(request_image_bytes, intake.data or b"", probe.format, model)
    add_watermark = (settings.imagen_add_watermark if form.add_watermark is None
                     else form.add_watermark)
    return new_job(services, intake, ImagenParams(
        **form.output_options(), model=model.name, factor=factor, gcp_project_id=project,
        gcp_region=form.gcp_region, add_watermark=add_watermark,
        upscale_factor=form.upscale_factor))
