"""What every route shares, written once as FastAPI dependencies: the replica's services, and
the intake of an upscale request (upload -> probe -> output plan)."""

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, File, Form, Header, Request, UploadFile

from serve_app.estimates import Estimator
from serve_app.gateway import EngineGateway, QuotaClient
from serve_app.limits import StreamSlots, UploadSlots
from serve_app.runner import JobRunner
from serve_app.schemas import CommonUpscaleForm
from serve_app.webhooks import WebhookSender
from upscaler.budget import MemoryBudget
from upscaler.decode_worker import DecodeWorkers
from upscaler.dimensions import OutputPlan, calculate_output_dimensions
from upscaler.errors import InvalidRequest, OutputTooLarge, PayloadTooLarge
from upscaler.idempotency import IdempotencyKeys
from upscaler.images import ImageProbe, probe_image
from upscaler.job_store import JobStore
from upscaler.keys import KeyStore
from upscaler.memory import decode_bytes
from upscaler.retention import RetentionSweeper
from upscaler.settings import Settings

# No `from __future__ import annotations` here: the dependency built by `intake()` needs its
# annotations evaluated, with the form class of the route that uses it.

FormT = TypeVar("FormT", bound=CommonUpscaleForm)


@dataclass
class Services:
    """One Ingress replica's state, shared by its routes (``app.state.services``)."""

    settings: Settings
    store: JobStore
    runner: JobRunner
    engines: EngineGateway
    estimator: Estimator
    keys: KeyStore
    quotas: QuotaClient
    uploads: UploadSlots
    decode_budget: MemoryBudget
    idempotency: IdempotencyKeys
    webhooks: WebhookSender
    retention: RetentionSweeper
    streams: StreamSlots = field(default_factory=StreamSlots)
    decoder: DecodeWorkers = field(default_factory=DecodeWorkers)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
PreferHeader = Annotated[str | None, Header(description="`respond-async`, or `wait=N` "
                                            "seconds (RFC 7240)", examples=["respond-async"])]


@dataclass
class Intake(Generic[FormT]):
    """A validated upscale request: its form, the upload's bytes, what they are, and the
    output size the print-size rule gives."""

    form: FormT
    data: bytes | None
    probe: ImageProbe
    plan: OutputPlan

    def take_data(self) -> bytes:
        """The upload's bytes, handed over once: this request holds them no longer (they are
        stored next, and a synchronous wait need not keep them in memory)."""
        data, self.data = self.data, None
        assert data is not None, "the upload was already taken"
        return data


FILE_FIELDS = ("file", "image")


def intake(form_class: type[FormT]):
    """The dependency every upscale route starts with, for that route's form."""
    allowed = set(form_class.model_fields) | set(FILE_FIELDS)

    async def dependency(
        request: Request,
        services: ServicesDep,
        form: Annotated[form_class, Form()],  # type: ignore[valid-type]
        file: Annotated[UploadFile | None, File(description="The image (PNG, JPEG, WebP, "
                                                "TIFF, BMP, GIF)")] = None,
        image: Annotated[UploadFile | None, File(description="Alias of `file`.")] = None,
    ) -> Intake[FormT]:
        unknown = sorted(set((await request.form()).keys()) - allowed)
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; this endpoint takes "
                                 f"{', '.join(sorted(allowed))}", code="unknown_field")
        # The request holds its upload slot already (serve_app/gate.py, before the body).
        data = await _read_upload(file or image, services.settings.max_upload_bytes)
        return await _checked(services, form, data)

    return dependency


async def _checked(services: Services, form: FormT, data: bytes) -> Intake[FormT]:
    """Header, output plan and its limit first (nothing decoded yet), then one full decode
    within the replica's decode budget (what its kind takes, upscaler/memory.py) and the
    decode time limit (in a worker process, stopped at the limit)."""
    settings = services.settings
    probe = await asyncio.to_thread(probe_image, data, settings.max_input_pixels)
    plan = output_plan(settings, probe.width, probe.height, form)
    async with services.decode_budget.reserve(decode_bytes(probe)):
        await services.decoder.check(data, settings.max_input_pixels, settings.decode_timeout_s)
    return Intake(form, data, probe, plan)


def output_plan(settings: Settings, width: int, height: int,
                form: CommonUpscaleForm) -> OutputPlan:
    """The print-size rule on a request's fields, and the output cap (an upload, or the web
    page's plan before one)."""
    try:
        plan = calculate_output_dimensions(
            width, height, form.plan_factor, form.target_dpi, form.target_width_inches,
            form.target_height_inches, form.crop_to_target, form.target_width,
            form.target_height)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    pixels = plan.output_width * plan.output_height
    if pixels > settings.max_output_pixels:
        raise OutputTooLarge(
            f"the output would be {plan.output_width}x{plan.output_height} = {pixels:,} "
            f"pixels; the limit is {settings.max_output_pixels:,}. Lower upscale_factor, the "
            "target size or target_dpi")
    return plan


async def _read_upload(upload: UploadFile | None, limit: int) -> bytes:
    if upload is None:
        raise InvalidRequest("send the image as a multipart/form-data field named 'file'",
                             code="missing_file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is larger than the limit of {limit:,} bytes")
    return data
