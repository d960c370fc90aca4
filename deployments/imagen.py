"""Imagen deployment: CPU only; its cost is a network call to Vertex AI and a quota.

``max_ongoing_requests`` bounds the calls in flight per replica (see ``serve_app.app``); each
call runs in a worker thread with its own retry budget and overall deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch
from ray import serve

from deployments.esrgan import EngineUserError
from engines.esrgan import resample
from engines.imagen import ImagenClient, ImagenError, credentials_status, request_image_bytes
from engines.imagen import model_spec as imagen_model
from serve_app.dimensions import OutputPlan
from serve_app.images import ImageInputError, decode_image, encode_image
from serve_app.jobs import JobStore
from serve_app.settings import Settings
from serve_app.storage import Storage


def _resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(plane))
    t = t.permute(2, 0, 1)[None] if t.dim() == 3 else t[None, None]
    out = resample(t, height, width)[0]
    return (out.permute(1, 2, 0) if plane.ndim == 3 else out[0]).numpy()


@serve.deployment(name="Imagen")
class ImagenDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = ImagenClient(settings.gcp_credentials_file, settings.vertex_api_endpoint,
                                   settings.gcp_project_id, settings.imagen_deadline_s,
                                   settings.imagen_call_timeout_s)
        self.store = JobStore(Storage(settings.resolved_storage_url), settings.stale_after_s)
        self.calls = 0

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {**credentials_status(s.gcp_credentials_file, s.gcp_project_id),
                "model": s.imagen_model, "region": s.gcp_region,
                "api_endpoint": s.vertex_api_endpoint or f"{s.gcp_region}-aiplatform.googleapis"
                ".com", "calls": self.calls}

    def _process(self, job: dict[str, Any]) -> dict[str, Any]:
        params = job["params"]
        data = self.store.storage.read_bytes(JobStore.input_key(job["job_id"]))
        source = decode_image(data, self.settings.max_input_pixels)
        model = imagen_model(params["model"])
        body, fmt = request_image_bytes(data, job["input_format"], model)
        self.calls += 1
        t0 = time.perf_counter()
        upscaled = self.client.upscale(body, f"image/{fmt.lower()}", params["factor"],
                                       model.name, params["gcp_project_id"],
                                       params["gcp_region"], params["add_watermark"])
        call_seconds = time.perf_counter() - t0
        try:
            result = decode_image(upscaled, 4 * self.settings.max_output_pixels)
        except ImageInputError:
            raise ImagenError(502, "vertex_bad_response",
                              "Vertex AI returned an image this service cannot read") from None
        plan = OutputPlan.from_dict(job["plan"])
        rgb = _resize(result.rgb, plan.output_height, plan.output_width)
        alpha = None if source.alpha is None else _resize(source.alpha, plan.output_height,
                                                           plan.output_width)
        if plan.crop_applied and plan.crop_info is not None:
            left, top, right, bottom = plan.crop_info.box
            rgb = rgb[top:bottom, left:right]
            alpha = None if alpha is None else alpha[top:bottom, left:right]
        if source.color == "gray":
            rgb = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2)
        out = source.with_pixels(np.ascontiguousarray(rgb), alpha)
        fmt_out = params["output_format"]
        encoded = encode_image(out, fmt_out, plan.dpi, self.settings.png_compress_level,
                               self.settings.tiff_compression)
        filename = f"{job['job_id']}.{fmt_out}"
        self.store.storage.write_bytes(JobStore.result_key(filename), encoded)
        return {"type": "completed", "result_key": JobStore.result_key(filename),
                "filename": filename,
                "stats": {"model": model.name, "vertex_factor": params["factor"],
                          "vertex_output": [result.width, result.height],
                          "vertex_seconds": round(call_seconds, 3), "device": "vertex-ai"}}

    async def run(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "started", "replica": "imagen"}
        try:
            yield await asyncio.to_thread(self._process, job)
        except ImagenError as exc:
            raise EngineUserError(exc.message, exc.code, exc.status_code,
                                  exc.retry_after) from None
