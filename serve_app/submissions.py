"""Each engine's rules for turning a validated request into a job: which model, which engine
options, what the engine accepts. The routes parse and answer; this decides."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serve_app.access import check_project
from serve_app.deps import EnginesDep, Intake, SettingsDep, output_plan
from serve_app.forms import (
    CommonUpscaleForm,
    EsrganUpscaleForm,
    FluxUpscaleForm,
    ImagenUpscaleForm,
)
from serve_app.gateway import EngineGateway
from serve_app.outlook import Outlook
from serve_app.schema_bleed import bleed_info
from serve_app.schemas import CropGuidance, PlanResponse
from upscaler.compute.dimensions import OutputPlan
from upscaler.compute.engines.imagen import choose_factor, request_image_bytes
from upscaler.compute.engines.imagen import model_spec as imagen_model
from upscaler.compute.memory import coordinator_bytes
from upscaler.compute.passes import plan_passes
from upscaler.domain.jobs import (
    Engine,
    EsrganParams,
    FluxParams,
    ImagenParams,
    JobParams,
    JobRecord,
    Size,
)
from upscaler.domain.keys import Caller
from upscaler.domain.metering import job_work
from upscaler.errors import InvalidRequest, OutputTooLarge, ServiceUnavailable, UpstreamError
from upscaler.settings import Settings

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


PLAN_FIELDS = ("upscale_factor", "target_dpi", "target_width_inches", "target_height_inches",
               "target_width", "target_height", "crop_to_target", "bleed", "bleed_unit",
               "output_format")  # formats: JPEG's 65,535 px side is checked on the plan


def plan_upload(settings: Settings, outlook: Outlook, width: int, height: int, engine: Engine,
                form_class: type[CommonUpscaleForm], query: Mapping[str, str],
                model_scale: int | None = None) -> PlanResponse:
    """An upload's plan before it is sent: the engine's own form checks the sizing fields,
    then the same rule and limit as the upload's (``deps.output_plan``); with the default
    model's ``model_scale``, the pixels it would compute (``upscaler.compute.passes``), which its
    key would be charged and its estimate is made from."""
    unknown = sorted(set(query) - {"width", "height", "engine", *PLAN_FIELDS})
    if unknown:
        raise InvalidRequest(f"unknown parameter(s) {', '.join(unknown)}; the plan takes "
                             f"width, height, engine, {', '.join(PLAN_FIELDS)}",
                             code="unknown_field")
    try:
        form = form_class.model_validate({k: query[k] for k in PLAN_FIELDS if k in query})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    plan = output_plan(settings, width, height, form)
    crop = plan.crop_info
    final = Size(width=plan.final_width, height=plan.final_height)
    computed = None
    if model_scale is not None:
        computed = plan_passes(width, height, plan.output_width, plan.output_height,
                               model_scale, settings.max_model_passes,
                               settings.max_output_pixels).computed_pixels / 1e6
    estimate = outlook.for_output(engine, computed or final.width * final.height / 1e6)
    return PlanResponse(
        engine=engine.value, inputSize=Size(width=width, height=height),
        outputSize=Size(width=plan.output_width, height=plan.output_height), finalSize=final,
        scaleFactor=round(plan.scale_factor, 6), dpi=plan.dpi,
        printInches=(round(final.width / plan.dpi, 2), round(final.height / plan.dpi, 2)),
        cropInfo=CropGuidance(direction=crop.direction, amount_px=crop.amount_px,
                              amount_inches=crop.amount_inches, box=crop.box) if crop else None,
        cropApplied=plan.crop_applied, estimatedTime=estimate,
        bleed=bleed_info(plan, form.bleed, form.bleed_unit), trimInches=trim_inches(plan),
        computedMegapixels=None if computed is None else round(computed, 3))


def trim_inches(plan: OutputPlan) -> tuple[float, float] | None:
    """The print without its bleed, in inches (None without a bleed)."""
    if plan.trim_box is None:
        return None
    left, top, right, bottom = plan.trim_box
    return round((right - left) / plan.dpi, 2), round((bottom - top) / plan.dpi, 2)


def new_job(settings: Settings, intake: Intake, params: JobParams,
            model_scale: int | None = None) -> JobRecord:
    """The job, with what it will compute (``upscaler.domain.metering``: the engines' own plans),
    which its key is charged. The runner that takes it in sets its owner."""
    probe, plan = intake.probe, intake.plan
    input_size = Size(width=probe.width, height=probe.height)
    return JobRecord(engine=params.engine, params=params,
                     input_format=probe.format, plan=plan, input_size=input_size,
                     output_size=Size(width=plan.final_width, height=plan.final_height),
                     work=job_work(settings, params, input_size, plan, model_scale))


# The job builders of serve_app/engine_specs.py: one signature for every engine.
async def esrgan_job(settings: Settings, engines: EngineGateway, who: Caller,
                     intake: Intake[EsrganUpscaleForm]) -> JobRecord:
    form = intake.form
    model = await engines.model_info(form.model)
    return new_job(settings, intake, EsrganParams(
        **form.output_options(), model=model.name, tile_size=form.tile_size or None,
        use_fp16=form.use_fp16, upscale_factor=form.upscale_factor), model.scale)


async def require_flux(engines: EnginesDep, settings: SettingsDep) -> None:
    """FLUX answers 503 with the command to run when its files are not installed (the
    missing files and the models folder go to the log, under the answer's error id)."""
    status = await engines.status(Engine.flux)
    if not status.installed:
        missing = status.message or "FLUX is not available"
        raise ServiceUnavailable(f"{missing} (models folder {settings.resolved_models_dir})",
                                 code="flux_not_installed")


async def flux_job(settings: Settings, engines: EngineGateway, who: Caller,
                   intake: Intake[FluxUpscaleForm]) -> JobRecord:
    form = intake.form
    low = settings.flux_min_tile_size
    if not low <= form.tile_size <= 2048 or form.tile_size % 16:
        raise InvalidRequest(f"tile_size must be a multiple of 16 between {low} and 2048 (got "
                             f"{form.tile_size})")
    need = coordinator_bytes(intake.plan, form.tile_size, form.tile_padding, form.tile_order,
                             form.seam_fix, form.seam_fix_width)
    budget = settings.flux_coordinator_memory_bytes
    if need > budget:
        raise OutputTooLarge(f"a FLUX job of {intake.plan.output_width}x"
                             f"{intake.plan.output_height} needs {need / 2**30:.1f} GB in the "
                             f"coordinator, more than its {budget / 2**30:.1f} GB "
                             "(flux_coordinator_memory_gb); ask for a smaller output")
    model = await engines.model_info(form.upscale_model)
    fields = form.model_dump(exclude={"wait", "model", "upscale_model", *form.output_options()})
    return new_job(settings, intake, FluxParams(**form.output_options(), **fields,
                                                upscale_model=model.name), model.scale)


async def imagen_job(settings: Settings, engines: EngineGateway, who: Caller,
                     intake: Intake[ImagenUpscaleForm]) -> JobRecord:
    form, probe, plan = intake.form, intake.probe, intake.plan
    status = await engines.status(Engine.imagen)
    if not status.credentials_found:
        raise UpstreamError("Imagen is not configured: no Google Cloud credentials. Set "
                            "UPSCALER_GCP_CREDENTIALS_FILE (or GOOGLE_APPLICATION_CREDENTIALS) "
                            "to a service-account key with roles/aiplatform.user",
                            code="credentials_missing")
    check_project(settings, who, form.gcp_project_id, status.project)
    project = form.gcp_project_id or status.project
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
    return new_job(settings, intake, ImagenParams(
        **form.output_options(), model=model.name, factor=factor, gcp_project_id=project,
        gcp_region=form.gcp_region, add_watermark=add_watermark,
        upscale_factor=form.upscale_factor))
