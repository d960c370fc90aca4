"""What the routes share, written once as FastAPI dependencies: each of the replica's services
on its own (a route asks for the ones it uses), and the intake of an upscale request
(upload -> probe -> output plan)."""

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, File, Form, Header, Request, UploadFile

from serve_app.estimates import Estimator
from serve_app.forms import CommonUpscaleForm
from serve_app.gateway import EngineGateway, QuotaClient
from serve_app.limits import StreamSlots, UploadSlots
from serve_app.outlook import Outlook
from serve_app.runner import JobRunner
from serve_app.webhooks import WebhookSender
from upscaler.compute.budget import MemoryBudget
from upscaler.compute.decode_worker import DecodeWorkers
from upscaler.compute.dimensions import OutputPlan, calculate_output_dimensions
from upscaler.compute.images import ImageProbe, probe_image
from upscaler.compute.jpeg import JPEG_MAX_SIDE
from upscaler.compute.memory import decode_bytes
from upscaler.domain.idempotency import IdempotencyKeys
from upscaler.domain.job_store import JobStore
from upscaler.domain.keys import KeyStore
from upscaler.domain.retention import RetentionSweeper
from upscaler.errors import InvalidRequest, OutputTooLarge, PayloadTooLarge
from upscaler.settings import Settings

# No `from __future__ import annotations` here: the dependency built by `intake()` needs its
# annotations evaluated, with the form class of the route that uses it.

FormT = TypeVar("FormT", bound=CommonUpscaleForm)


@dataclass
class Services:
    """One Ingress replica's state (``app.state.services``): what its app starts and stops.
    Routes and the functions they call take the single services they use (below)."""

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

    @property
    def outlook(self) -> Outlook:
        return Outlook(self.estimator, self.runner, self.engines)


def services_of(request: Request) -> Services:
    return request.app.state.services


# Each async: FastAPI runs a plain `def` dependency in a thread, a hop per request for a read.
async def _settings(request: Request) -> Settings:
    return services_of(request).settings


async def _store(request: Request) -> JobStore:
    return services_of(request).store


async def _runner(request: Request) -> JobRunner:
    return services_of(request).runner


async def _engines(request: Request) -> EngineGateway:
    return services_of(request).engines


async def _outlook(request: Request) -> Outlook:
    return services_of(request).outlook


async def _keys(request: Request) -> KeyStore:
    return services_of(request).keys


async def _quotas(request: Request) -> QuotaClient:
    return services_of(request).quotas


async def _idempotency(request: Request) -> IdempotencyKeys:
    return services_of(request).idempotency


async def _webhooks(request: Request) -> WebhookSender:
    return services_of(request).webhooks


async def _streams(request: Request) -> StreamSlots:
    return services_of(request).streams


async def _decode_budget(request: Request) -> MemoryBudget:
    return services_of(request).decode_budget


async def _decoder(request: Request) -> DecodeWorkers:
    return services_of(request).decoder


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
RunnerDep = Annotated[JobRunner, Depends(_runner)]
EnginesDep = Annotated[EngineGateway, Depends(_engines)]
OutlookDep = Annotated[Outlook, Depends(_outlook)]
KeysDep = Annotated[KeyStore, Depends(_keys)]
QuotasDep = Annotated[QuotaClient, Depends(_quotas)]
IdempotencyDep = Annotated[IdempotencyKeys, Depends(_idempotency)]
WebhooksDep = Annotated[WebhookSender, Depends(_webhooks)]
StreamsDep = Annotated[StreamSlots, Depends(_streams)]
DecodeBudgetDep = Annotated[MemoryBudget, Depends(_decode_budget)]
DecoderDep = Annotated[DecodeWorkers, Depends(_decoder)]
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
        settings: SettingsDep,
        budget: DecodeBudgetDep,
        decoder: DecoderDep,
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
        data = await _read_upload(file or image, settings.max_upload_bytes)
        return await _checked(settings, budget, decoder, form, data)

    return dependency


async def _checked(settings: Settings, budget: MemoryBudget, decoder: DecodeWorkers,
                   form: FormT, data: bytes) -> Intake[FormT]:
    """Header, output plan and its limit first (nothing decoded yet), then one full decode
    within the replica's decode budget (what its kind takes, upscaler/compute/memory.py) and the
    decode time limit (in a worker process, stopped at the limit)."""
    probe = await asyncio.to_thread(probe_image, data, settings.max_input_pixels)
    plan = output_plan(settings, probe.width, probe.height, form)
    async with budget.reserve(decode_bytes(probe)):
        await decoder.check(data, settings.max_input_pixels, settings.decode_timeout_s)
    return Intake(form, data, probe, plan)


def output_plan(settings: Settings, width: int, height: int,
                form: CommonUpscaleForm) -> OutputPlan:
    """The print-size rule on a request's fields, and the output cap (an upload, or the web
    page's plan before one)."""
    try:
        plan = calculate_output_dimensions(
            width, height, form.plan_factor, form.target_dpi, form.target_width_inches,
            form.target_height_inches, form.crop_to_target, form.target_width,
            form.target_height, form.bleed, form.bleed_unit)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code=getattr(exc, "code", None)) from exc
    pixels = plan.output_width * plan.output_height
    if pixels > settings.max_output_pixels:
        raise OutputTooLarge(
            f"the output would be {plan.output_width}x{plan.output_height} = {pixels:,} "
            f"pixels; the limit is {settings.max_output_pixels:,}. Lower upscale_factor, the "
            "target size, the bleed or target_dpi")
    final = max(plan.final_width, plan.final_height)
    if form.output_format == "jpeg" and final > JPEG_MAX_SIDE:
        raise OutputTooLarge(
            f"the output would be {plan.final_width}x{plan.final_height}; JPEG holds at most "
            f"{JPEG_MAX_SIDE:,} px a side. Send output_format=tiff (or png), or a smaller "
            "size", code="jpeg_too_large")
    return plan


async def _read_upload(upload: UploadFile | None, limit: int) -> bytes:
    if upload is None:
        raise InvalidRequest("send the image as a multipart/form-data field named 'file'",
                             code="missing_file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is larger than the limit of {limit:,} bytes")
    return data
