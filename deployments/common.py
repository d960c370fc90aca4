"""What every engine deployment does around its engine, written once: where it runs, reading a
job's input, writing its result, and streaming events from work that runs in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.fencing import AttemptFence, write_result
from deployments.quality import Fidelity, measure_quality
from upscaler import ray_support
from upscaler.compute.canvas import OutputImage
from upscaler.compute.canvas_file import scratch_folder
from upscaler.compute.device import resolve_device, use_cpu_threads
from upscaler.compute.images import DecodedImage, decode_image
from upscaler.compute.streamed_decode import decode_to_canvas
from upscaler.compute.writers import write_output
from upscaler.domain.job_stats import JobStats
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import Completed, JobEvent, JobSpec
from upscaler.domain.storage import Storage
from upscaler.settings import Settings

if TYPE_CHECKING:
    import torch

Emit = Callable[[JobEvent], None]


def open_job_store(settings: Settings) -> JobStore:
    """The job store at the configured location (leases as long as ``stale_after_s``)."""
    return JobStore(Storage(settings.resolved_storage_url, settings.storage_options),
                    settings.stale_after_s)


def replica_tag() -> str:
    """This Serve replica's id (a pid outside Serve), recorded with the work it does."""
    return ray_support.replica_id() or f"pid-{os.getpid()}"


def engine_device(settings: Settings) -> torch.device:
    """The replica's device, with torch's CPU threads set for it."""
    device = resolve_device(settings.device)
    use_cpu_threads(device, settings.cpu_threads)
    return device


def gpu_snapshot() -> dict[str, Any]:
    """The device's fields of an ``EngineStatus``."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu_available": False, "gpu_name": None, "gpu_memory_free": None,
                "gpu_memory_total": None}
    free, total = torch.cuda.mem_get_info()
    return {"gpu_available": True, "gpu_name": torch.cuda.get_device_name(),
            "gpu_memory_free": round(free / 1024**3, 2),
            "gpu_memory_total": round(total / 1024**3, 2)}


def read_input(store: JobStore, spec: JobSpec, max_pixels: int,
               data: bytes | None = None, integers: bool = False) -> tuple[bytes, DecodedImage]:
    """The job's upload (as sent along with the call, else read from job storage), decoded
    (``integers``: as ``decode_image`` says)."""
    if data is None:
        data = store.storage.read_bytes(JobStore.input_key(spec.job_id))
    return data, decode_image(data, max_pixels, integers)


def read_input_by_strips(storage: Storage, key: str, max_pixels: int, folder: Path,
                         data: bytes | None = None) -> DecodedImage:
    """A job's upload (``key`` in job storage, or ``data`` sent along with the call) as
    ``read_input(integers=True)`` gives it; a big 8-bit RGB(A) one decoded strip by strip into
    a canvas in ``folder`` (``compute.streamed_decode``), copied there from storage first: the
    job never holds its upload's bytes or pixels whole."""
    source: bytes | Path
    if data is None:
        source = folder / "upload"
        with storage.open(key) as src, source.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        source = data
    try:
        image = decode_to_canvas(source, folder, max_pixels)
        if image is None:
            image = decode_image(source if isinstance(source, bytes) else source.read_bytes(),
                                 max_pixels, integers=True)
    finally:
        if isinstance(source, Path):
            source.unlink(missing_ok=True)
    return image


def finish_job(store: JobStore, spec: JobSpec, image: DecodedImage | OutputImage,
               settings: Settings, stats: JobStats, fence: AttemptFence | None = None,
               fidelity: Fidelity | None = None) -> Completed:
    """The engine's output at the planned size (in memory, or an ``OutputImage`` on a canvas):
    its fidelity report measured (uncropped, against ``fidelity.source``), cropped when the
    crop is applied, written with the DPI and the request's print options to a file in the
    scratch folder strip by strip, uploaded from it to job storage; the event that reports it."""
    output = image if isinstance(image, OutputImage) else OutputImage.from_decoded(image)
    quality, quality_seconds = measure_quality(spec.engine.value, fidelity, output)
    started = time.perf_counter()
    output = output.cropped(spec.plan.applied_crop_box)
    params = spec.params
    with scratch_folder(settings.resolved_scratch_dir, f"result-{spec.job_id}") as folder:
        path = folder / spec.result_filename
        size = write_output(output, params.output_format, path, spec.plan.dpi,
                            settings.png_compress_level,
                            params.tiff_compression or settings.tiff_compression,
                            settings.png_encoder, params.encode_options())
        # Fenced (written only while this run is the job's current attempt) and tried again
        # while storage is down, for up to a lease: a finished image is not thrown away lightly.
        key = write_result(store, spec, path, settings.stale_after_s, fence)
    return Completed(key, spec.result_filename, stats.with_output(
        round(time.perf_counter() - started, 3), size).with_quality_seconds(
        quality_seconds), quality)


async def stream_from_thread(work: Callable[[Emit, threading.Event], Completed],
                             fence: AttemptFence | None = None) -> AsyncIterator[JobEvent]:
    """Run ``work(emit, cancelled)`` in a worker thread and yield what it emits, then its
    result. The replica's event loop stays free for health and model questions meanwhile;
    when the caller goes away (cancel), ``cancelled`` is set and the work stops at its next
    check. With a ``fence``, ``cancelled`` is also set when the job moves on without this run
    (deployments.fencing), which then ends with ``Superseded``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[JobEvent] = asyncio.Queue()
    cancelled = threading.Event()

    def emit(event: JobEvent) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    task = loop.run_in_executor(None, work, emit, cancelled)
    getter: asyncio.Future | None = None
    try:
        async with fence.watching(cancelled) if fence else contextlib.nullcontext():
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                if fence is not None and fence.reason is not None and task.exception():
                    raise fence.error() from task.exception()  # stopped by the fence
                yield task.result()
                return
    finally:
        cancelled.set()
        if getter is not None:
            getter.cancel()
        # A caller that went away leaves the work to stop at its next check: what it ends
        # with (UpscaleCancelled) is nobody's to report, and not an unretrieved error in the log.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
