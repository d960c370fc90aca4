"""ESRGAN deployment: a thin Ray Serve wrapper around ``engines.esrgan.EsrganEngine``.

It adds what the engine should not know about: resources (GPU reservation, autoscaling, set in
``serve_app.app``), reading the upload from and writing the result to job storage, one GPU job
at a time per replica, and progress streamed back to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import torch
from ray import serve

from engines.esrgan import EsrganEngine
from engines.models import ModelRegistry, UnknownModelError, UnsupportedModelError
from serve_app import metrics
from serve_app.dimensions import OutputPlan
from serve_app.images import DecodedImage, ImageInputError, decode_image, encode_image
from serve_app.jobs import JobStore
from serve_app.settings import Settings
from serve_app.storage import Storage

logger = logging.getLogger("ray.serve")


class EngineUserError(Exception):
    """A failure caused by the request (not the service); its message is shown to the user."""

    def __init__(self, message: str, code: str = "invalid_request", status_code: int = 422,
                 retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.retry_after = retry_after


def replica_tag() -> str:
    """This Serve replica's id (a pid outside Serve), recorded with the work it does."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve
        return f"pid-{os.getpid()}"


def gpu_snapshot() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu_available": False, "gpu_name": None, "gpu_memory_free": None,
                "gpu_memory_total": None}
    free, total = torch.cuda.mem_get_info()
    return {"gpu_available": True, "gpu_name": torch.cuda.get_device_name(),
            "gpu_memory_free": round(free / 1024**3, 2),
            "gpu_memory_total": round(total / 1024**3, 2)}


def default_model_name(settings: Settings, registry: ModelRegistry) -> str | None:
    names = registry.names()
    for name in settings.default_models:
        if name in names:
            return name
    return names[0] if names else None


@serve.deployment(name="ESRGAN")
class EsrganDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = ModelRegistry(settings.upscale_models_dir)
        self.engine = EsrganEngine(
            self.registry, device=settings.device, cache_size=settings.model_cache_size,
            cpu_tile_size=settings.cpu_tile_size, overlap=settings.tile_overlap,
            max_passes=settings.max_model_passes,
            max_intermediate_pixels=4 * settings.max_output_pixels)
        if self.engine.device.type == "cpu":
            torch.set_num_threads(settings.cpu_threads or os.cpu_count() or 1)
        self.store = JobStore(Storage(settings.resolved_storage_url), settings.stale_after_s)
        self._gpu_lock = threading.Lock()  # one image at a time on this replica's device
        self._busy_jobs = 0
        self._completed = 0
        self.replica_id = replica_tag()
        # Warm the default model so the first request does not pay for loading it.
        default = default_model_name(settings, self.registry)
        if default:
            try:
                loaded = self.engine.load(default, use_fp16=True)
                metrics.set_gauge(metrics.model_load_seconds, loaded.load_seconds,
                                  engine="esrgan", model=default)
            except UnsupportedModelError as exc:
                logger.warning("default model %s not loadable: %s", default, exc)

    # --- model questions (cheap; answered while a job runs) -------------------------------
    def default_model(self) -> str | None:
        return default_model_name(self.settings, self.registry)

    def model_info(self, name: str | None) -> dict[str, Any]:
        """Info for ``name`` (or the default). Raises EngineUserError for unknown names."""
        name = name or self.default_model()
        if name is None:
            raise EngineUserError(
                "no super-resolution model is installed; run `upscaler models pull DAT_light_x4`",
                "no_models")
        try:
            return self.registry.info(name).as_dict()
        except UnknownModelError as exc:
            raise EngineUserError(str(exc), "unknown_model") from exc
        except UnsupportedModelError as exc:
            raise EngineUserError(str(exc), "unsupported_model") from exc

    def list_models(self) -> dict[str, Any]:
        infos, errors = self.registry.list_info()
        return {"models": [i.as_dict() for i in infos], "unloadable": errors,
                "default": self.default_model()}

    def health(self) -> dict[str, Any]:
        return {**gpu_snapshot(), "device": str(self.engine.device),
                "models_loaded": self.engine.cache.loaded_names(), "busy_jobs": self._busy_jobs,
                "completed_jobs": self._completed, "replica": self.replica_id}

    def check_health(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.mem_get_info()  # raises if the device is gone

    # --- the job -------------------------------------------------------------------------
    def _process(self, job: dict[str, Any], progress, cancelled: threading.Event) -> dict:
        data = self.store.storage.read_bytes(JobStore.input_key(job["job_id"]))
        image = decode_image(data, self.settings.max_input_pixels)
        plan = OutputPlan.from_dict(job["plan"])
        params = job["params"]
        with self._gpu_lock:
            progress({"type": "started", "replica": self.replica_id})
            result = self.engine.upscale(
                image, params["model"], plan, tile_size=params.get("tile_size"),
                use_fp16=params.get("use_fp16", True),
                progress=lambda done, total: progress(
                    {"type": "progress", "done": done, "total": total}),
                should_stop=cancelled.is_set)
        t0 = time.perf_counter()
        fmt = params["output_format"]
        encoded = encode_image(result.image, fmt, plan.dpi, self.settings.png_compress_level,
                               self.settings.tiff_compression)
        filename = f"{job['job_id']}.{fmt}"
        self.store.storage.write_bytes(JobStore.result_key(filename), encoded)
        stats = {**result.stats, "encode_seconds": round(time.perf_counter() - t0, 3),
                 "output_bytes": len(encoded), "replica": self.replica_id}
        return {"type": "completed", "result_key": JobStore.result_key(filename),
                "filename": filename, "stats": stats}

    def _prepass_sync(self, job: dict[str, Any]) -> DecodedImage:
        data = self.store.storage.read_bytes(JobStore.input_key(job["job_id"]))
        image = decode_image(data, self.settings.max_input_pixels)
        plan = OutputPlan.from_dict({**job["plan"], "crop_applied": False})
        with self._gpu_lock:
            return self.engine.upscale(image, job["params"]["upscale_model"], plan).image

    async def prepass(self, job: dict[str, Any]) -> DecodedImage:
        """FLUX's first step: this model to the exact output size (the crop comes later)."""
        self._busy_jobs += 1
        try:
            return await asyncio.to_thread(self._prepass_sync, job)
        except (UnknownModelError, UnsupportedModelError) as exc:
            raise EngineUserError(str(exc), "unknown_model") from None
        finally:
            self._busy_jobs -= 1

    async def run(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Process one job; yields ``started`` / ``progress`` events, then ``completed``.

        Inference runs in a worker thread so this replica keeps answering health and model
        questions; cancelling the call (the caller went away or cancelled) stops between tiles.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict] = asyncio.Queue()
        cancelled = threading.Event()

        def progress(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        self._busy_jobs += 1
        work = loop.run_in_executor(None, self._process, job, progress, cancelled)
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                try:
                    result = work.result()
                except ImageInputError as exc:
                    raise EngineUserError(exc.message, exc.code) from None
                except (UnknownModelError, UnsupportedModelError) as exc:
                    raise EngineUserError(str(exc), "unknown_model") from None
                self._completed += 1
                yield result
                return
        finally:
            cancelled.set()
            self._busy_jobs -= 1
