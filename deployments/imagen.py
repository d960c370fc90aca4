"""Imagen deployment: CPU only; its cost is a network call to Vertex AI and a quota.

``max_ongoing_requests`` bounds the calls in flight per replica (see
``serve_app.deploy_options``); each call runs in a worker thread with its own retry budget and
overall deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

import numpy as np
from ray import serve

from deployments.common import (
    Emit,
    finish_job,
    open_job_store,
    read_input,
    stream_from_thread,
)
from deployments.quality import Fidelity
from deployments.vertex import VertexClient
from upscaler.compute.engines.imagen import credentials_status, request_image_bytes
from upscaler.compute.engines.imagen import model_spec as imagen_model
from upscaler.compute.images import decode_image
from upscaler.compute.resample import resample_plane
from upscaler.domain.contracts import EngineStatus
from upscaler.domain.job_stats import ImagenStats
from upscaler.domain.jobs import Completed, ImagenParams, JobEvent, JobSpec, Started
from upscaler.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType, UpstreamError
from upscaler.settings import Settings


@serve.deployment(name="Imagen")
class ImagenDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = VertexClient(settings.gcp_credentials_file, settings.vertex_api_endpoint,
                                   settings.gcp_project_id, settings.imagen_deadline_s,
                                   settings.imagen_call_timeout_s)
        self.store = open_job_store(settings)
        self.calls = 0

    def status(self) -> EngineStatus:
        s = self.settings
        return EngineStatus(
            **credentials_status(s.gcp_credentials_file, s.gcp_project_id),
            model=s.imagen_model, region=s.gcp_region,
            api_endpoint=s.vertex_api_endpoint or f"{s.gcp_region}-aiplatform.googleapis.com",
            calls=self.calls)

    def _process(self, spec: JobSpec, data: bytes | None, emit: Emit,
                 _cancelled: threading.Event) -> Completed:
        params = spec.params
        assert isinstance(params, ImagenParams)
        emit(Started("imagen"))
        data, source = read_input(self.store, spec, self.settings.max_input_pixels, data)
        model = imagen_model(params.model)
        body, fmt = request_image_bytes(data, spec.input_format or "PNG", model)
        self.calls += 1
        t0 = time.perf_counter()
        upscaled = self.client.upscale(body, f"image/{fmt.lower()}", params.factor,
                                       model.name, params.gcp_project_id, params.gcp_region,
                                       params.add_watermark)
        call_seconds = time.perf_counter() - t0
        try:
            result = decode_image(upscaled, 4 * self.settings.max_output_pixels)
        except (InvalidImage, PayloadTooLarge, UnsupportedMediaType):
            raise UpstreamError("Vertex AI returned an image this service cannot read",
                                code="vertex_bad_response") from None
        # Vertex's size is its factor's; the plan's exact size (and the source's alpha and
        # colour kind) come from here.
        plan = spec.plan
        rgb = resample_plane(result.rgb, plan.output_height, plan.output_width)
        alpha = None if source.alpha is None else resample_plane(
            source.alpha, plan.output_height, plan.output_width)
        if source.color == "gray":
            rgb = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2)
        return finish_job(self.store, spec, source.with_pixels(rgb, alpha), self.settings,
                          ImagenStats(model=model.name, vertex_factor=params.factor,
                                      vertex_output=[result.width, result.height],
                                      vertex_seconds=round(call_seconds, 3),
                                      device="vertex-ai"), fidelity=Fidelity(source))

    async def run(self, spec: JobSpec, data: bytes | None = None) -> AsyncIterator[JobEvent]:
        # One Vertex call cannot stop midway; the fence keeps a superseded run's result out.
        async for event in stream_from_thread(lambda emit, cancelled: self._process(
                spec, data, emit, cancelled)):
            yield event
