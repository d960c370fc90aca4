"""ESRGAN deployment: a thin Ray Serve wrapper around
``upscaler.compute.engines.esrgan.EsrganEngine``.

It adds what the engine should not know about: resources (GPU reservation, autoscaling, set in
``serve_app.deploy_options``), reading the upload from and writing the result to job storage,
one GPU job at a time per replica, and progress streamed back to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from ray import serve

from deployments.common import (
    Emit,
    engine_device,
    finish_job,
    gpu_snapshot,
    open_job_store,
    read_input,
    read_input_by_strips,
    replica_tag,
    stream_from_thread,
)
from deployments.fencing import AttemptFence
from deployments.quality import esrgan_fidelity
from upscaler import ray_support
from upscaler.compute.canvas import OutputImage
from upscaler.compute.canvas_file import scratch_folder
from upscaler.compute.engines.models import ModelInfo, ModelRegistry
from upscaler.compute.engines.usdu_disk import image_to_disk, write_npz
from upscaler.compute.images import DecodedImage
from upscaler.compute.memory import return_big_buffers
from upscaler.domain.contracts import EngineStatus, ModelList, PrepassStored
from upscaler.domain.job_stats import EsrganStats
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import (
    Completed,
    EsrganParams,
    FluxParams,
    JobEvent,
    JobSpec,
    Progress,
    Started,
)
from upscaler.errors import ServiceUnavailable, Superseded, UnsupportedModel
from upscaler.settings import Settings

if TYPE_CHECKING:
    from upscaler.compute.engines.esrgan import EsrganEngine

logger = logging.getLogger("ray.serve")


def default_model_name(settings: Settings, registry: ModelRegistry) -> str | None:
    names = registry.names()
    for name in settings.default_models:
        if name in names:
            return name
    return names[0] if names else None


def esrgan_engine(settings: Settings, registry: ModelRegistry) -> EsrganEngine:
    # Imported here: the application builder imports this module, and needs no torch.
    from upscaler.compute.engines.esrgan import EsrganEngine

    return_big_buffers()  # host RSS follows the live tiles and images (bench_memory.py)

    return EsrganEngine(
        registry, device=engine_device(settings), cache_size=settings.model_cache_size,
        cpu_tile_size=settings.cpu_tile_size, context=settings.tile_context,
        max_passes=settings.max_model_passes, compile_models=settings.esrgan_torch_compile,
        # No model pass, the first included, makes more pixels than an output may have:
        # memory follows the output cap (upscaler/compute/passes.py; tests/test_memory.py).
        max_intermediate_pixels=settings.max_output_pixels)


class ModelQuestions:
    """The model questions, answered from a models folder: a replica's, or the Ingress's own
    node's while no ESRGAN replica runs (asking one would start it, and its GPU node)."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None):
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.upscale_models_dir)

    def default_model(self) -> str | None:
        return default_model_name(self.settings, self.registry)

    def model_info(self, name: str | None) -> ModelInfo:
        """``name`` (or the default). Raises UnknownModel / UnsupportedModel /
        ServiceUnavailable (no model installed)."""
        name = name or self.default_model()
        if name is None:
            raise ServiceUnavailable(
                "no super-resolution model is installed; run `upscaler models pull "
                "DAT_light_x4`", code="no_models")
        return self.registry.info(name)

    def list_models(self) -> ModelList:
        infos, errors = self.registry.list_info()
        return ModelList(tuple(infos), errors, self.default_model())


@serve.deployment(name="ESRGAN")
class EsrganDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = ModelRegistry(settings.upscale_models_dir)
        self.models = ModelQuestions(settings, self.registry)
        self.engine = esrgan_engine(settings, self.registry)
        self.store = open_job_store(settings)
        self._gpu_lock = threading.Lock()  # one image at a time on this replica's device
        self._busy_jobs = 0
        self._completed = 0
        self._superseded = 0  # runs stopped because their job moved on (deployments.fencing)
        self.replica_id = replica_tag()
        # Warm the default model beside the rest of start-up: the replica is ready at once,
        # and a job that comes first waits only for what is left of the load. Not a daemon:
        # a process that exits mid-load waits for it (torch aborts the process otherwise).
        threading.Thread(target=self._warm, name="esrgan-warm-up").start()

    def _warm(self) -> None:
        default = default_model_name(self.settings, self.registry)
        if default:
            try:
                loaded = self.engine.load(default, use_fp16=True)
                ray_support.set_gauge(ray_support.model_load_seconds, loaded.load_seconds,
                                  engine="esrgan", model=default)
            except UnsupportedModel as exc:
                logger.warning("default model %s not loadable: %s", default, exc)

    # --- model questions (cheap; answered while a job runs) -------------------------------
    def default_model(self) -> str | None:
        return self.models.default_model()

    def model_info(self, name: str | None) -> ModelInfo:
        return self.models.model_info(name)

    def list_models(self) -> ModelList:
        return self.models.list_models()

    def status(self) -> EngineStatus:
        return EngineStatus(**gpu_snapshot(), device=str(self.engine.device),
                            models_loaded=self.engine.cache.loaded_names(),
                            busy_jobs=self._busy_jobs, completed_jobs=self._completed,
                            superseded_jobs=self._superseded, replica=self.replica_id)

    def check_health(self) -> None:
        if self.engine.device.type == "cuda":
            import torch

            torch.cuda.mem_get_info()  # raises if the device is gone

    # --- the work ------------------------------------------------------------------------
    def _upscale(self, spec: JobSpec, model: str, tile_size: int | None, use_fp16: bool,
                 emit: Emit | None = None, cancelled: threading.Event | None = None,
                 data: bytes | None = None, canvas_dir: Path | None = None
                 ) -> tuple[DecodedImage, DecodedImage | OutputImage, dict]:
        """The job's decoded input, its upscaled image (uncropped) and the engine's stats."""
        # The engine takes the upload's integers as they are (a quarter of float32's bytes),
        # a big one from disk when the job has a scratch folder.
        if canvas_dir is not None:
            image = read_input_by_strips(self.store.storage, JobStore.input_key(spec.job_id),
                                         self.settings.max_input_pixels, canvas_dir, data)
        else:
            _, image = read_input(self.store, spec, self.settings.max_input_pixels, data,
                                  integers=True)
        with self._gpu_lock:
            if emit:
                emit(Started(self.replica_id))
            result = self.engine.upscale(
                image, model, spec.plan, tile_size=tile_size, use_fp16=use_fp16,
                progress=emit and (lambda done, total: emit(Progress(done, total))),
                should_stop=cancelled.is_set if cancelled else None,
                quantize=emit is not None,  # FLUX's pre-pass (no events) wants floats
                canvas_dir=canvas_dir)
        return image, result.image, result.stats

    def _process(self, spec: JobSpec, data: bytes | None, emit: Emit,
                 cancelled: threading.Event, fence: AttemptFence | None = None) -> Completed:
        params = spec.params
        assert isinstance(params, EsrganParams)
        # The output is assembled on local disk, tile by tile; the folder goes with the job
        # (done, failed or cancelled).
        with scratch_folder(self.settings.resolved_scratch_dir, f"esrgan-{spec.job_id}") as \
                folder:
            source, image, stats = self._upscale(spec, params.model, params.tile_size,
                                                 params.use_fp16, emit, cancelled, data, folder)
            try:
                return finish_job(self.store, spec, image, self.settings,
                                  EsrganStats(**stats, replica=self.replica_id), fence,
                                  esrgan_fidelity(source, stats, image.height, image.width))
            finally:
                if isinstance(image, OutputImage):
                    image.close()

    async def prepass(self, spec: JobSpec) -> PrepassStored:
        """FLUX's first step: the pre-pass model to the exact output size (uncropped), kept
        in job storage in float16 (what a resumed job reads too), for the coordinator to read
        by bands: it never holds the image, and no image crosses the handle."""
        self._busy_jobs += 1
        try:
            return await asyncio.to_thread(self._store_prepass, spec)
        finally:
            self._busy_jobs -= 1

    def _store_prepass(self, spec: JobSpec) -> PrepassStored:
        params = spec.params
        assert isinstance(params, FluxParams)
        key = JobStore.prepass_key(spec.job_id)
        with scratch_folder(self.settings.resolved_scratch_dir, f"prepass-{spec.job_id}") as \
                folder:
            _, image, _ = self._upscale(spec, params.upscale_model, None, True)
            assert isinstance(image, DecodedImage)  # floats, in memory: no canvas asked
            disk = image_to_disk(image, folder)
            del image
            npz = folder / "prepass.npz"
            write_npz(disk, npz)
            disk.close()
            self.store.storage.write_file(key, npz)
        return PrepassStored(key, disk.width, disk.height)

    async def run(self, spec: JobSpec, data: bytes | None = None) -> AsyncIterator[JobEvent]:
        """Process one job (``data``: its upload, when the caller sends it along): ``Started``
        / ``Progress`` events, then ``Completed``. Cancelling the call (the caller went away
        or cancelled) stops between tiles, and so does the job moving on without this run
        (a newer attempt took it over, it was cancelled elsewhere): then ``Superseded``."""
        self._busy_jobs += 1
        fence = AttemptFence(self.store, spec)
        try:
            async for event in stream_from_thread(lambda emit, cancelled: self._process(
                    spec, data, emit, cancelled, fence), fence):
                if isinstance(event, Completed):
                    self._completed += 1
                yield event
        except Superseded:
            self._superseded += 1
            raise
        finally:
            self._busy_jobs -= 1

