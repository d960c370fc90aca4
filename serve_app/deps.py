"""What every route shares, written once as FastAPI dependencies: the replica's services, and
the intake of an upscale request (upload -> probe -> output plan)."""

import asyncio
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, File, Form, Header, Request, UploadFile

from serve_app.estimates import Estimator
from serve_app.gateway import EngineGateway
from serve_app.runner import JobRunner
from serve_app.schemas import CommonUpscaleForm
from upscaler.dimensions import OutputPlan, calculate_output_dimensions
from upscaler.errors import InvalidRequest, OutputTooLarge, PayloadTooLarge
from upscaler.images import ImageProbe, probe_image
from upscaler.job_store import JobStore
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


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
PreferHeader = Annotated[str | None, Header(description="`respond-async`, or `wait=N` "
                                            "seconds (RFC 7240)")]


@dataclass(frozen=True)
class Intake(Generic[FormT]):
    """A validated upscale request: its form, the upload's bytes, what they are, and the
    output size the print-size rule gives."""

    form: FormT
    data: bytes
    probe: ImageProbe
    plan: OutputPlan


def intake(form_class: type[FormT]):
    """The dependency every upscale route starts with, for that route's form."""

    async def dependency(
        services: ServicesDep,
        form: Annotated[form_class, Form()],  # type: ignore[valid-type]
        file: Annotated[UploadFile | None, File(description="The image (PNG, JPEG, WebP, "
                                                "TIFF, BMP, GIF)")] = None,
        image: Annotated[UploadFile | None, File(description="Alias of `file`.")] = None,
    ) -> Intake[FormT]:
        settings = services.settings
        data = await _read_upload(file or image, settings.max_upload_bytes)
        probe = await asyncio.to_thread(probe_image, data, settings.max_input_pixels)
        try:
            plan = calculate_output_dimensions(
                probe.width, probe.height, form.plan_factor, form.target_dpi,
                form.target_width_inches, form.target_height_inches, form.crop_to_target,
                form.target_width, form.target_height)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        pixels = plan.output_width * plan.output_height
        if pixels > settings.max_output_pixels:
            raise OutputTooLarge(
                f"the output would be {plan.output_width}x{plan.output_height} = {pixels:,} "
                f"pixels; the limit is {settings.max_output_pixels:,}. Lower upscale_factor, "
                "the target size or target_dpi")
        return Intake(form, data, probe, plan)

    return dependency


async def _read_upload(upload: UploadFile | None, limit: int) -> bytes:
    if upload is None:
        raise InvalidRequest("send the image as a multipart/form-data field named 'file'",
                             code="missing_file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is larger than the limit of {limit:,} bytes")
    return data
