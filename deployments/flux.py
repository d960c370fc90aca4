"""FLUX deployments: GPU replicas that redraw tiles, and the coordinator that runs one image's
Ultimate SD Upscale over all of them.

* ``FluxDeployment`` (``num_gpus`` per replica, autoscaled): holds the pipeline, answers
  ``encode_prompt`` and ``redraw`` (one tile; cancelling the call stops it at the next step).
* ``FluxCoordinator`` (CPU): ESRGAN pre-pass through the ESRGAN deployment, then the USDU waves,
  each wave's tiles sent concurrently through the handle so Serve spreads them over every FLUX
  replica; each finished tile is written to job storage at once, so a resumed job only computes
  the tiles it lacks. It streams ``started`` / ``progress`` / ``completed`` like ESRGAN.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import metrics
from deployments.common import engine_device, finish_job, replica_tag
from upscaler.budget import MemoryBudget
from upscaler.engines.flux import FluxNotInstalled, FluxTileEngine, PromptEmbeds
from upscaler.engines.usdu import TiledCanvas, color_fix, plan_tiles, waves
from upscaler.images import DecodedImage
from upscaler.job_store import JobStore
from upscaler.jobs import FluxParams, JobEvent, JobSpec, Progress, Started
from upscaler.memory import coordinator_bytes
from upscaler.settings import Settings

logger = logging.getLogger("ray.serve")


class TileCancelled(Exception):
    pass


@serve.deployment(name="FLUX")
class FluxDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.replica_id = replica_tag()
        self.engine: FluxTileEngine | None = None
        self.missing: FluxNotInstalled | None = None
        self.tiles_done = 0
        try:
            t0 = time.perf_counter()
            self.engine = FluxTileEngine(settings.resolved_models_dir, engine_device(settings),
                                         settings.flux_dtype, settings.flux_memory_mode)
            metrics.set_gauge(metrics.model_load_seconds, time.perf_counter() - t0,
                              engine="flux", model="flux1-dev-Q8_0")
        except FluxNotInstalled as exc:
            self.missing = exc  # the service runs; FLUX requests get a 503 saying this

    def status(self) -> dict[str, Any]:
        base = {"installed": self.engine is not None, "replica": self.replica_id,
                "tiles_done": self.tiles_done}
        if self.engine is None:
            return {**base, "message": self.missing and self.missing.message}
        gpu = {}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            gpu = {"gpu_name": torch.cuda.get_device_name(),
                   "gpu_memory_free": round(free / 1024**3, 2)}
        return {**base, **self.engine.info(), **gpu}

    def _require(self) -> FluxTileEngine:
        if self.engine is None:
            raise self.missing or FluxNotInstalled("FLUX is not installed")
        return self.engine

    async def encode_prompt(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        embeds = await asyncio.to_thread(self._require().encode_prompt, prompt)
        return embeds.prompt_embeds, embeds.pooled

    async def redraw(self, crop: np.ndarray, embeds: tuple[np.ndarray, np.ndarray],
                     params: FluxParams, seed: int) -> dict[str, Any]:
        engine = self._require()
        cancelled = threading.Event()

        def on_step(_step: int) -> None:
            if cancelled.is_set():
                raise TileCancelled()

        start, started_at = time.perf_counter(), time.time()
        work = asyncio.to_thread(
            engine.redraw, crop.astype(np.float32), PromptEmbeds(*embeds),
            params.denoise, params.steps, params.guidance, seed, on_step)
        try:
            out = await work
        except asyncio.CancelledError:
            cancelled.set()  # the thread stops at its next step and frees the GPU
            raise
        self.tiles_done += 1
        metrics.observe(metrics.tile_seconds, time.perf_counter() - start, engine="flux")
        return {"image": out.astype(np.float16), "replica": self.replica_id,
                "seconds": round(time.perf_counter() - start, 3),
                "started_at": started_at, "finished_at": time.time()}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@serve.deployment(name="FluxCoordinator")
class FluxCoordinator:
    def __init__(self, settings: Settings, esrgan: DeploymentHandle, flux: DeploymentHandle):
        self.settings = settings
        self.esrgan = esrgan
        self.flux = flux
        self.store = JobStore.from_settings(settings)
        # Each job's image lives here while its tiles are drawn: jobs run as they fit.
        self.memory = MemoryBudget(settings.flux_coordinator_memory_bytes)

    def _load_done(self, job_id: str) -> dict[int, np.ndarray]:
        done = {}
        for key in self.store.storage.list(JobStore.tiles_prefix(job_id)):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".npy") and name[:-4].isdigit():
                done[int(name[:-4])] = _from_npy(self.store.storage.read_bytes(key))
        return done

    async def _prepass(self, spec: JobSpec) -> DecodedImage:
        """ESRGAN to the exact output size (no crop yet), kept in storage for resumes."""
        key = JobStore.prepass_key(spec.job_id)
        if await asyncio.to_thread(self.store.storage.exists, key):
            return _image_from_npz(await asyncio.to_thread(self.store.storage.read_bytes, key))
        image = await self.esrgan.prepass.remote(spec)
        stored = _image_to_npz(image)
        await asyncio.to_thread(self.store.storage.write_bytes, key, stored)
        # What a resumed run will read back (half precision): the same image either way.
        return _image_from_npz(stored)

    async def run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        """The job, once its image fits in the memory budget (until then it stays queued)."""
        async with self.memory.reserve(coordinator_bytes(spec.plan)):
            async for event in self._run(spec):
                yield event

    async def _run(self, spec: JobSpec) -> AsyncIterator[JobEvent]:
        job_id, params = spec.job_id, spec.params
        assert isinstance(params, FluxParams)
        yield Started("coordinator")
        start = time.perf_counter()
        marks: dict[str, Any] = {"start": time.time()}
        prepass = await self._prepass(spec)
        marks["prepass"] = time.time()
        yield Progress(0, 1, stage="prepass")
        embeds = await self.flux.encode_prompt.remote(params.prompt)
        marks["prompt"] = time.time()
        marks["paste"] = []

        h, w = prepass.height, prepass.width
        tiles = plan_tiles(h, w, params.tile_size, params.tile_padding, params.tile_order,
                           params.seam_fix, params.seam_fix_width)
        done = await asyncio.to_thread(self._load_done, job_id)
        resumed = len(done)
        canvas = TiledCanvas(prepass.rgb, params.mask_blur)
        tile_log: list[dict] = []
        finished = 0
        for wave in waves(tiles):
            if wave[0].wave == 2:
                canvas.start_layer()
            todo = [t for t in wave if t.index not in done]
            crops = {t.index: canvas.crop(t) for t in todo}
            sent = time.time()
            calls = {asyncio.ensure_future(self.flux.redraw.remote(
                crops[t.index], embeds, params, params.seed + t.index)): t for t in todo}
            try:
                # tiles finished in an earlier run are pasted, not recomputed
                finished += sum(1 for t in wave if t.index in done)
                pending = set(calls)
                while pending:
                    ready, pending = await asyncio.wait(pending,
                                                        return_when=asyncio.FIRST_COMPLETED)
                    for fut in ready:
                        tile = calls[fut]
                        result = fut.result()
                        returned = time.time()
                        out = color_fix(result["image"].astype(np.float32), crops[tile.index],
                                        params.color_fix).astype(np.float16)
                        await asyncio.to_thread(
                            self.store.storage.write_bytes,
                            f"{JobStore.tiles_prefix(job_id)}/{tile.index}.npy", _npy(out))
                        done[tile.index] = out
                        tile_log.append({k: result[k] for k in (
                            "replica", "seconds", "started_at", "finished_at")}
                            | {"tile": tile.index, "sent": sent, "returned": returned,
                               "stored": time.time()})
                        finished += 1
                        yield Progress(finished, len(tiles), tile=tile.index,
                                       replica=result["replica"])
            finally:
                for fut in calls:  # cancelled job or failure: stop the tiles still running
                    fut.cancel()
            paste_start = time.time()
            for t in wave:
                canvas.paste(t, done[t.index].astype(np.float32))
            canvas.end_wave()
            marks["paste"].append([paste_start, time.time()])

        image = prepass.with_pixels(canvas.image(), prepass.alpha)
        replicas = sorted({t["replica"] for t in tile_log})
        marks["finish"] = time.time()
        yield await asyncio.to_thread(finish_job, self.store, spec, image, self.settings, {
            "tiles": len(tiles), "tiles_computed": len(tile_log), "tiles_resumed": resumed,
            "replicas": replicas, "tile_log": tile_log, "timeline": marks,
            "seconds": round(time.perf_counter() - start, 3)})


def _image_to_npz(image: DecodedImage) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, rgb=image.rgb.astype(np.float16),
             alpha=(image.alpha if image.alpha is not None else np.zeros(0)).astype(np.float16),
             icc=np.frombuffer(image.icc_profile or b"", np.uint8),
             meta=np.array(f"{image.color}|{image.bit_depth}|{image.source_format}"))
    return buf.getvalue()


def _image_from_npz(data: bytes) -> DecodedImage:
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    color, bit_depth, source_format = arrays["meta"].item().split("|")
    alpha = arrays["alpha"].astype(np.float32) if arrays["alpha"].size else None
    return DecodedImage(arrays["rgb"].astype(np.float32), alpha, color, int(bit_depth),
                        arrays["icc"].tobytes() or None, source_format)
