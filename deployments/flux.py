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
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.esrgan import EngineUserError, replica_tag
from engines.flux import FluxNotInstalled, FluxTileEngine, PromptEmbeds
from engines.usdu import TiledCanvas, color_fix, plan_tiles, waves
from serve_app import metrics
from serve_app.dimensions import OutputPlan
from serve_app.images import DecodedImage, encode_image
from serve_app.jobs import JobStore
from serve_app.settings import Settings
from serve_app.storage import Storage

logger = logging.getLogger("ray.serve")


class TileCancelled(Exception):
    pass


@serve.deployment(name="FLUX")
class FluxDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.replica_id = replica_tag()
        self.engine: FluxTileEngine | None = None
        self.missing: str | None = None
        self.tiles_done = 0
        try:
            t0 = time.perf_counter()
            self.engine = FluxTileEngine(settings.resolved_models_dir, settings.device,
                                         settings.flux_dtype, settings.flux_memory_mode)
            metrics.set_gauge(metrics.model_load_seconds, time.perf_counter() - t0,
                              engine="flux", model="flux1-dev-Q8_0")
            if self.engine.device.type == "cpu":
                torch.set_num_threads(settings.cpu_threads or os.cpu_count() or 1)
        except FluxNotInstalled as exc:
            self.missing = str(exc)  # the service runs; FLUX requests get a 503 saying this

    def status(self) -> dict[str, Any]:
        base = {"installed": self.engine is not None, "replica": self.replica_id,
                "tiles_done": self.tiles_done}
        if self.engine is None:
            return {**base, "message": self.missing}
        gpu = {}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            gpu = {"gpu_name": torch.cuda.get_device_name(),
                   "gpu_memory_free": round(free / 1024**3, 2)}
        return {**base, **self.engine.info(), **gpu}

    def _require(self) -> FluxTileEngine:
        if self.engine is None:
            raise EngineUserError(self.missing or "FLUX is not installed", "flux_not_installed")
        return self.engine

    async def encode_prompt(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        embeds = await asyncio.to_thread(self._require().encode_prompt, prompt)
        return embeds.prompt_embeds, embeds.pooled

    async def redraw(self, crop: np.ndarray, embeds: tuple[np.ndarray, np.ndarray],
                     params: dict[str, Any], seed: int) -> dict[str, Any]:
        engine = self._require()
        cancelled = threading.Event()

        def on_step(_step: int) -> None:
            if cancelled.is_set():
                raise TileCancelled()

        start, started_at = time.perf_counter(), time.time()
        work = asyncio.to_thread(
            engine.redraw, crop.astype(np.float32), PromptEmbeds(*embeds),
            params["denoise"], params["steps"], params["guidance"], seed, on_step)
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
        self.store = JobStore(Storage(settings.resolved_storage_url), settings.stale_after_s)

    def _load_done(self, job_id: str) -> dict[int, np.ndarray]:
        done = {}
        for key in self.store.storage.list(JobStore.tiles_prefix(job_id)):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".npy") and name[:-4].isdigit():
                done[int(name[:-4])] = _from_npy(self.store.storage.read_bytes(key))
        return done

    async def _prepass(self, job: dict[str, Any]) -> DecodedImage:
        """ESRGAN to the exact output size (no crop yet), kept in storage for resumes."""
        key = f"jobs/{job['job_id']}/prepass.npz"
        if await asyncio.to_thread(self.store.storage.exists, key):
            data = np.load(io.BytesIO(await asyncio.to_thread(self.store.storage.read_bytes,
                                                              key)), allow_pickle=False)
            meta = data["meta"].item().split("|")
            alpha = data["alpha"] if data["alpha"].size else None
            return DecodedImage(data["rgb"].astype(np.float32),
                                None if alpha is None else alpha.astype(np.float32),
                                meta[0], int(meta[1]), data["icc"].tobytes() or None, meta[2])
        image = await self.esrgan.prepass.remote(job)
        buf = io.BytesIO()
        np.savez(buf, rgb=image.rgb.astype(np.float16),
                 alpha=(image.alpha if image.alpha is not None else np.zeros(0)).astype(
                     np.float16),
                 icc=np.frombuffer(image.icc_profile or b"", np.uint8),
                 meta=np.array(f"{image.color}|{image.bit_depth}|{image.source_format}"))
        await asyncio.to_thread(self.store.storage.write_bytes, key, buf.getvalue())
        return image

    async def run(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        job_id, params = job["job_id"], job["params"]
        yield {"type": "started", "replica": "coordinator"}
        start = time.perf_counter()
        prepass = await self._prepass(job)
        yield {"type": "progress", "done": 0, "total": 1, "stage": "prepass"}
        embeds = await self.flux.encode_prompt.remote(params["prompt"])

        h, w = prepass.height, prepass.width
        tiles = plan_tiles(h, w, params["tile_size"], params["tile_padding"],
                           params["tile_order"], params["seam_fix"], params["seam_fix_width"])
        done = await asyncio.to_thread(self._load_done, job_id)
        resumed = len(done)
        canvas = TiledCanvas(prepass.rgb, params["mask_blur"])
        tile_log: list[dict] = []
        finished = 0
        for wave in waves(tiles):
            if wave[0].wave == 2:
                canvas.start_layer()
            todo = [t for t in wave if t.index not in done]
            crops = {t.index: canvas.crop(t) for t in todo}
            calls = {asyncio.ensure_future(self.flux.redraw.remote(
                crops[t.index], embeds, params, params["seed"] + t.index)): t for t in todo}
            try:
                for t in wave:  # tiles finished in an earlier run are pasted, not recomputed
                    if t.index in done:
                        finished += 1
                pending = set(calls)
                while pending:
                    ready, pending = await asyncio.wait(pending,
                                                        return_when=asyncio.FIRST_COMPLETED)
                    for fut in ready:
                        tile = calls[fut]
                        result = fut.result()
                        out = color_fix(result["image"].astype(np.float32), crops[tile.index],
                                        params["color_fix"]).astype(np.float16)
                        await asyncio.to_thread(
                            self.store.storage.write_bytes,
                            f"{JobStore.tiles_prefix(job_id)}/{tile.index}.npy", _npy(out))
                        done[tile.index] = out
                        tile_log.append({k: result[k] for k in (
                            "replica", "seconds", "started_at", "finished_at")}
                            | {"tile": tile.index})
                        finished += 1
                        yield {"type": "progress", "done": finished, "total": len(tiles),
                               "tile": tile.index, "replica": result["replica"]}
            finally:
                for fut in calls:  # cancelled job or failure: stop the tiles still running
                    fut.cancel()
            for t in wave:
                canvas.paste(t, done[t.index].astype(np.float32))
            canvas.end_wave()

        image = prepass.with_pixels(canvas.image(), prepass.alpha)
        plan = OutputPlan.from_dict(job["plan"])
        if plan.crop_applied and plan.crop_info is not None:
            left, top, right, bottom = plan.crop_info.box
            image = image.with_pixels(
                image.rgb[top:bottom, left:right],
                None if image.alpha is None else image.alpha[top:bottom, left:right])
        fmt = params["output_format"]
        encoded = await asyncio.to_thread(encode_image, image, fmt, plan.dpi,
                                          self.settings.png_compress_level,
                                          self.settings.tiff_compression)
        filename = f"{job_id}.{fmt}"
        await asyncio.to_thread(self.store.storage.write_bytes, JobStore.result_key(filename),
                                encoded)
        replicas = sorted({t["replica"] for t in tile_log})
        yield {"type": "completed", "result_key": JobStore.result_key(filename),
               "filename": filename,
               "stats": {"tiles": len(tiles), "tiles_computed": len(tile_log),
                         "tiles_resumed": resumed, "replicas": replicas, "tile_log": tile_log,
                         "seconds": round(time.perf_counter() - start, 3)}}

