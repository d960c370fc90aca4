"""FLUX deployments: GPU replicas that redraw tiles, and the coordinator that runs one image's
Ultimate SD Upscale over all of them. Design: docs/design/engines.md
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import (
    engine_device,
    finish_job,
    open_job_store,
    read_input,
    replica_tag,
)
from deployments.fencing import AttemptFence
from deployments.quality import Fidelity
from upscaler import ray_support
from upscaler.compute.budget import MemoryBudget
from upscaler.compute.canvas_file import scratch_folder
from upscaler.compute.engines.flux_files import (
    FluxFiles,
    FluxNotInstalled,
    PromptEmbeds,
    flux_not_installed,
)
from upscaler.compute.engines.usdu import (
    Tile,
    TileSchedule,
    blend_to_canvas,
    color_fix,
    plan_tiles,
    render_crop,
)
from upscaler.compute.engines.usdu_disk import (
    DiskImage,
    TileFiles,
    read_npz,
)
from upscaler.compute.fidelity import drift, usdu_grid
from upscaler.compute.memory import coordinator_bytes
from upscaler.domain.contracts import EngineStatus, PrepassStored, TileResult
from upscaler.domain.job_stats import FluxStats, TileLogEntry
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import FluxParams, JobEvent, JobSpec, Progress, Started
from upscaler.settings import Settings

if TYPE_CHECKING:
    from upscaler.compute.engines.flux import FluxTileEngine

logger = logging.getLogger("ray.serve")


class TileCancelled(Exception):
    pass


RERUN_SEED_STEP = 7919  # a re-drawn tile's new seed: seed + index + this


def tile_attempt(params: FluxParams, seed: int, attempt: int) -> tuple[FluxParams, int]:
    """A tile's draw ``attempt`` (0: as asked): a new seed first, then half the denoise (what
    keeps a tile closest to the pixels it was drawn from)."""
    if attempt == 0:
        return params, seed
    if attempt == 1:
        return params, seed + RERUN_SEED_STEP
    return params.model_copy(update={"denoise": params.denoise / 2}), seed


@serve.deployment(name="FLUX")
class FluxDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.replica_id = replica_tag()
        self.engine: FluxTileEngine | None = None
        self.missing: FluxNotInstalled | None = None
        self.tiles_done = 0
        self._drawing = threading.Lock()
        try:
            if missing := FluxFiles(settings.resolved_models_dir).missing():
                # Said before torch and diffusers are imported: seconds of start and a GB
                # of memory on every replica of a service that has no FLUX files.
                raise flux_not_installed(missing, settings.resolved_models_dir)
            from upscaler.compute.engines.flux import FluxTileEngine  # noqa: F811  (torch: here)

            t0 = time.perf_counter()
            self.engine = FluxTileEngine(settings.resolved_models_dir, engine_device(settings),
                                         settings.flux_dtype, settings.flux_memory_mode)
            ray_support.set_gauge(ray_support.model_load_seconds, time.perf_counter() - t0,
                              engine="flux", model="flux1-dev-Q8_0")
        except FluxNotInstalled as exc:
            self.missing = exc  # the service runs; FLUX requests get a 503 saying this

    def status(self) -> EngineStatus:
        base = {"installed": self.engine is not None, "replica": self.replica_id,
                "tiles_done": self.tiles_done}
        if self.engine is None:
            return EngineStatus(**base, message=self.missing and self.missing.message)
        gpu = {}
        import torch  # loaded with the engine already

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            gpu = {"gpu_name": torch.cuda.get_device_name(),
                   "gpu_memory_free": round(free / 1024**3, 2)}
        return EngineStatus(**base, **self.engine.info(), **gpu)

    def _require(self) -> FluxTileEngine:
        if self.engine is None:
            raise self.missing or FluxNotInstalled("FLUX is not installed")
        return self.engine

    async def encode_prompt(self, prompt: str) -> PromptEmbeds:
        return await asyncio.to_thread(self._require().encode_prompt, prompt)

    async def redraw(self, crop: np.ndarray, embeds: PromptEmbeds,
                     params: FluxParams, seed: int) -> TileResult:
        engine = self._require()
        cancelled = threading.Event()

        def on_step(_step: int) -> None:
            if cancelled.is_set():
                raise TileCancelled()

        def draw() -> tuple[np.ndarray, float, float]:
            # A tile sent here while another draws (a second caller, a config with more than
            # one slot) waits for it: its time counts from when it starts, and a cancel while
            # it waits ends it here.
            with self._drawing:
                if cancelled.is_set():
                    raise TileCancelled()
                start, started_at = time.perf_counter(), time.time()
                return engine.redraw(crop.astype(np.float32), embeds,
                                     params.denoise, params.steps, params.guidance, seed,
                                     on_step), start, started_at

        try:
            out, start, started_at = await asyncio.to_thread(draw)
        except asyncio.CancelledError:
            cancelled.set()  # the thread stops at its next step and frees the GPU
            raise
        self.tiles_done += 1
        ray_support.observe(ray_support.tile_seconds, time.perf_counter() - start, engine="flux")
        return TileResult(out.astype(np.float16), self.replica_id,
                          round(time.perf_counter() - start, 3), started_at, time.time())


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@serve.deployment(name="FluxCoordinator")
class FluxCoordinator:
    def __init__(self, settings: Settings, esrgan: DeploymentHandle, flux: DeploymentHandle):
        self.settings = settings
        self.esrgan = esrgan
        self.flux = flux
        self.store = open_job_store(settings)
        # Each job's tiles (and the pre-pass as it arrives) live here: jobs run as they fit.
        self.memory = MemoryBudget(settings.flux_coordinator_memory_bytes)

    def _load_done(self, job_id: str, tiles: TileFiles) -> None:
        """Tiles finished in an earlier run, copied one at a time into the job's tile files."""
        for key in self.store.storage.list(JobStore.tiles_prefix(job_id)):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".npy") and name[:-4].isdigit():
                tiles.put_npy(int(name[:-4]), self.store.storage.read_bytes(key))

    def _read_prepass(self, key: str, folder: Path) -> DiskImage:
        with self.store.storage.open(key) as stored:
            return read_npz(stored, folder)

    async def _prepass(self, spec: JobSpec, folder: Path) -> DiskImage:
        """ESRGAN to the exact output size (no crop yet), in float16 canvases in ``folder``
        and kept in storage (the same float16) for resumes: both runs cut the same crops."""
        key = JobStore.prepass_key(spec.job_id)
        if not await asyncio.to_thread(self.store.storage.exists, key):
            stored: PrepassStored = await self.esrgan.prepass.remote(spec)
            key = stored.key
        return await asyncio.to_thread(self._read_prepass, key, folder)

    async def run(self, spec: JobSpec, _data: bytes | None = None) -> AsyncIterator[JobEvent]:
        """The job, once its image fits in the memory budget (until then it stays queued).
        Its upload is read from job storage by the pre-pass (minutes of work: no hurry)."""
        # Fenced (deployments.fencing): a run whose job moved on stops after its next tile
        # (its tiles still running are cancelled) and writes no result. Watched once it has
        # its memory: a job waiting in the queue reads no record.
        fence, superseded = AttemptFence(self.store, spec), threading.Event()
        p = spec.params
        assert isinstance(p, FluxParams)
        need = coordinator_bytes(spec.plan, p.tile_size, p.tile_padding, p.tile_order,
                                 p.seam_fix, p.seam_fix_width)
        # The job's files (pre-pass, tiles, blend) go with it however it ends.
        with scratch_folder(self.settings.resolved_scratch_dir, f"flux-{spec.job_id}") as folder:
            async with (self.memory.reserve(need),
                        fence.watching(superseded),
                        contextlib.aclosing(self._run(spec, fence, folder)) as events):
                async for event in events:
                    if superseded.is_set():
                        raise fence.error()  # closing _run cancels its running tiles
                    yield event

    async def _run(self, spec: JobSpec, fence: AttemptFence,
                   folder: Path) -> AsyncIterator[JobEvent]:
        job_id, params = spec.job_id, spec.params
        assert isinstance(params, FluxParams)
        start = time.perf_counter()
        timeline: dict[str, float] = {"start": time.time()}
        # The prompt is encoded on a FLUX replica while ESRGAN runs the pre-pass. The job is
        # processing once a FLUX replica answered: with FLUX scaled to zero it stays queued
        # (with the start in its estimate) while Serve starts one.
        prompt = asyncio.ensure_future(self.flux.encode_prompt.remote(params.prompt))
        prepassing = asyncio.ensure_future(self._prepass(spec, folder))
        try:
            embeds = await prompt
            timeline["prompt"] = time.time()
            yield Started("coordinator")
            prepass = await prepassing
            timeline["prepass"] = time.time()
            yield Progress(0, 1, stage="prepass")
        finally:
            for task in (prompt, prepassing):
                if not task.done():  # the other failed, or the job was cancelled
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # seen here, so asyncio does not log it as lost

        tiles = plan_tiles(prepass.height, prepass.width, params.tile_size, params.tile_padding,
                           params.tile_order, params.seam_fix, params.seam_fix_width)
        # Tiles finished in an earlier run are pasted, not recomputed. All are read from
        # disk as a crop or a band of the blend needs them.
        outputs = TileFiles(folder / "tiles")
        await asyncio.to_thread(self._load_done, job_id, outputs)
        resumed = len(outputs)
        schedule = TileSchedule(tiles, outputs)
        tile_log: list[TileLogEntry] = []
        running: dict[asyncio.Future, Tile] = {}
        block = max(1, round(spec.plan.scale_factor))  # drift is judged at the input's scale

        async def send_ready() -> None:
            """Start every tile whose needed tiles are drawn (all at once: Serve spreads them
            over the replicas, and the queue it sees is what autoscaling reads)."""
            ready = schedule.take_ready()
            if not ready:
                return
            crops = await asyncio.to_thread(
                lambda: [render_crop(prepass.rgb, tiles, outputs, t, params.mask_blur)
                         for t in ready])
            for tile, crop in zip(ready, crops, strict=True):
                running[asyncio.ensure_future(
                    self._draw(tile, crop, embeds, params, block))] = tile

        try:
            await send_ready()
            while running:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(finished, key=lambda f: running[f].index):
                    tile = running.pop(task)
                    out, drawn, sent, returned, delta_e, attempts = task.result()
                    await asyncio.to_thread(
                        self._keep_tile, f"{JobStore.tiles_prefix(job_id)}/{tile.index}.npy",
                        outputs, tile.index, _npy(out))
                    del out
                    schedule.finish(tile.index)
                    tile_log.append(TileLogEntry(
                        replica=drawn.replica, seconds=drawn.seconds,
                        started_at=drawn.started_at, finished_at=drawn.finished_at,
                        tile=tile.index, sent=sent, returned=returned, stored=time.time(),
                        delta_e=delta_e, attempts=attempts))
                    await send_ready()
                    yield Progress(len(schedule.done), len(tiles), tile=tile.index,
                                   replica=drawn.replica)
        finally:
            for task in running:  # cancelled job or failure: stop the tiles still running
                task.cancel()
        timeline["tiles"] = time.time()

        # The blend, band by band into an on-disk canvas, off the event loop (seconds on a
        # print-sized image).
        image = await asyncio.to_thread(blend_to_canvas, prepass, tiles, outputs,
                                        params.mask_blur, folder)
        timeline["image"] = time.time()
        replicas = sorted({t.replica for t in tile_log})
        # The report compares with the upload (read again: the pre-pass replica decoded it).
        _, source = await asyncio.to_thread(read_input, self.store, spec,
                                            self.settings.max_input_pixels, None, True)
        fidelity = Fidelity(source, usdu_grid(image.height, image.width, params.tile_size),
                            tiles_rerun=sum(t.attempts > 1 for t in tile_log))
        yield await asyncio.to_thread(
            finish_job, self.store, spec, image, self.settings,
            FluxStats(tiles=len(tiles), tiles_computed=len(tile_log), tiles_resumed=resumed,
                      replicas=replicas, tile_log=tile_log, timeline=timeline,
                      seconds=round(time.perf_counter() - start, 3)), fence, fidelity)

    def _keep_tile(self, key: str, outputs: TileFiles, index: int, data: bytes) -> None:
        """Stored before any tile that needs it starts: a resumed job's crops are cut from the
        very pixels this run's were."""
        self.store.storage.write_bytes(key, data)
        outputs.put_npy(index, data)

    async def _draw(self, tile: Tile, crop: np.ndarray, embeds: PromptEmbeds,
                    params: FluxParams, block: int
                    ) -> tuple[np.ndarray, TileResult, float, float, float, int]:
        """One tile on whichever FLUX replica Serve picks, colour-fixed off the event loop,
        and drawn again while it drifts (``flux_tile_max_delta_e``, up to
        ``flux_tile_max_reruns`` times): the best draw, its replica's answer, when it was
        first sent and last came back, its drift and the draws made."""
        sent, best = time.time(), None
        for attempt in range(1 + self.settings.flux_tile_max_reruns):
            asked, seed = tile_attempt(params, params.seed + tile.index, attempt)
            response = self.flux.redraw.remote(crop, embeds, asked, seed)
            try:
                result: TileResult = await response
            except asyncio.CancelledError:
                # Stop the replica's work too, not only this wait for it.
                if (cancel := getattr(response, "cancel", None)) is not None:
                    cancel()
                raise
            out, delta_e = await asyncio.to_thread(
                _fixed_and_drift, result.image, crop, tile, params, block)
            if best is None or delta_e < best[2]:
                best = (out, result, delta_e)
            if delta_e <= self.settings.flux_tile_max_delta_e:
                break
        assert best is not None
        return best[0], best[1], sent, time.time(), round(best[2], 3), attempt + 1


def _fixed_and_drift(image: np.ndarray, crop: np.ndarray, tile: Tile, params: FluxParams,
                     block: int) -> tuple[np.ndarray, float]:
    """The redrawn tile colour-fixed, and its drift: mean ΔE2000 of its core (the rect it
    owns) vs the same pixels of the crop it was drawn from, both area-averaged over the
    upscale factor. The crop, not the upload: it is what the redraw was asked to keep, at
    hand as each tile returns (the pre-pass's own drift from the upload is ESRGAN's)."""
    out = color_fix(image.astype(np.float32), crop, params.color_fix)
    y0, y1, x0, x1 = tile.rect
    cy, cx = tile.crop[0], tile.crop[2]
    core = (slice(y0 - cy, y1 - cy), slice(x0 - cx, x1 - cx))
    return out.astype(np.float16), drift(out[core], crop[core].astype(np.float32), block)

