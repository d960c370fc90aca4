"""ESRGAN-family upscaling: any spandrel model, tiled, to the exact size the print-size rule asks.
Plain Python (torch + numpy); ``deployments/esrgan.py`` wraps it. Design: docs/design/engines.md
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from upscaler.compute.canvas import CanvasSink, OutputImage, ResampledAlpha
from upscaler.compute.canvas_file import Canvas
from upscaler.compute.device import resolve_device
from upscaler.compute.dimensions import OutputPlan
from upscaler.compute.engines.models import LoadedModel, ModelCache, ModelRegistry
from upscaler.compute.engines.tiling import (
    PassInput,
    QuantizedSink,
    TensorSink,
    context_for,
    count_tiles,
    input_size,
    run_tiled,
)
from upscaler.compute.images import DecodedImage
from upscaler.compute.passes import PassPlan, plan_passes
from upscaler.compute.png import WHOLE_IMAGE_MAX_PIXELS
from upscaler.compute.quantize import quantize_plane
from upscaler.compute.resample import resample, resample_plane, unit_float
from upscaler.compute.resample_bands import FloatPlane, ResampledPlane

MIN_TILE = 64
ProgressFn = Callable[[int, int], None]


class UpscaleCancelled(Exception):
    pass


def choose_dtype(device: torch.device, supports_half: bool, supports_bf16: bool,
                 use_fp16: bool) -> torch.dtype:
    """fp16 where the architecture is known to work in it, else bf16 (DAT, SwinIR...), else fp32.

    On CPU always fp32: half precision there is slower and less accurate.
    """
    if device.type != "cuda" or not use_fp16:
        return torch.float32
    if supports_half:
        return torch.float16
    if supports_bf16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _is_oom(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's (a RuntimeError "DefaultCPUAllocator:
    can't allocate memory"), or Python's own MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text)


@dataclass
class EsrganResult:
    image: DecodedImage | OutputImage  # OutputImage: written into a canvas (``canvas_dir``)
    stats: dict


# Activations per input pixel of a window, in half precision (RRDB-64 x4, the heaviest common
# model); twice that in float32. What the automatic tile and batch sizes are planned with.
BYTES_PER_WINDOW_PIXEL = 12_000
MAX_BATCH = 8


class EsrganEngine:
    def __init__(self, registry: ModelRegistry, device: str | torch.device = "auto",
                 cache_size: int = 3, cpu_tile_size: int = 256, context: int | None = None,
                 max_passes: int = 3, max_intermediate_pixels: int = 600_000_000,
                 compile_models: bool = False,
                 canvas_min_pixels: int = WHOLE_IMAGE_MAX_PIXELS):
        self.registry = registry
        self.device = resolve_device(device)
        self.cache = ModelCache(registry, self.device, cache_size, compile_models)
        self.cpu_tile_size = cpu_tile_size
        self.context = context  # None: per architecture (tiling.CONTEXT_PX)
        self.max_passes = max_passes
        self.max_intermediate_pixels = max_intermediate_pixels
        # Outputs up to this size stay in memory (the whole-image encoders take them as
        # they are: a canvas would cost a write and a read back for nothing).
        self.canvas_min_pixels = canvas_min_pixels

    # --- sizing --------------------------------------------------------------------------
    def _window_bytes(self, side: int, dtype: torch.dtype) -> int:
        return side * side * BYTES_PER_WINDOW_PIXEL * (2 if dtype == torch.float32 else 1)

    def auto_tile_size(self, height: int, width: int, dtype: torch.dtype, context: int) -> int:
        """The core of a tile. CPU: a fixed size that bounds host memory. CUDA: the biggest
        multiple of 64 whose window (core and context) fits in half the free memory; the
        whole image when it fits."""
        if self.device.type != "cuda":
            return self.cpu_tile_size
        free, _ = torch.cuda.mem_get_info(self.device)
        window = int(math.sqrt(0.5 * free / self._window_bytes(1, dtype)))
        side = max(MIN_TILE, min(window - 2 * context, 2048) // 64 * 64)
        return max(height, width) if max(height, width) <= window else side

    def batch_size(self, tile: int, context: int, dtype: torch.dtype) -> int:
        """Windows per forward pass: on a GPU as many as fit in half the free memory (up to
        MAX_BATCH), which keeps it busy with small tiles; on the CPU one."""
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        window = self._window_bytes(tile + 2 * context, dtype)
        return max(1, min(MAX_BATCH, int(0.5 * free // window)))

    def load(self, name: str, use_fp16: bool) -> LoadedModel:
        info = self.registry.info(name)
        dtype = choose_dtype(self.device, info.supports_half, info.supports_bfloat16, use_fp16)
        return self.cache.get(name, dtype)

    def plan(self, width: int, height: int, plan: OutputPlan, model_scale: int) -> PassPlan:
        """The passes for an input of ``width x height`` (the Ingress charges the same plan,
        made with the same settings: ``upscaler.domain.metering``)."""
        return plan_passes(width, height, plan.output_width, plan.output_height, model_scale,
                           self.max_passes, self.max_intermediate_pixels)

    # --- inference -----------------------------------------------------------------------
    def _model_fn(self, loaded: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        desc = loaded.descriptor
        gray_model = desc.input_channels == 1  # type: ignore[attr-defined]
        channels_last = loaded.device.type == "cuda"

        @torch.inference_mode()
        def fn(tile: torch.Tensor) -> torch.Tensor:
            if tile.dtype == torch.uint16:  # few kernels take uint16: floats on the host
                tile = tile.to(torch.float32).div_(65535.0)
            x = tile.to(loaded.device, non_blocking=True)
            if x.dtype == torch.uint8:  # the upload's integers, made floats on the device
                x = x.to(torch.float32).div_(255.0)
            x = x.mean(dim=1, keepdim=True) if gray_model else x
            x = x.to(loaded.dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = desc(x).float()  # type: ignore[operator]
            return y.repeat(1, 3, 1, 1) if gray_model else y

        return fn

    def upscale(self, image: DecodedImage, model_name: str, plan: OutputPlan,
                tile_size: int | None = None, use_fp16: bool = True,
                progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None,
                quantize: bool = True, canvas_dir: Path | None = None) -> EsrganResult:
        """The image at the plan's output size (before any crop). With ``quantize`` the
        pixels come back as the file will hold them (uint8, or uint16 for 16-bit sources)
        when the model's own size is the plan's: no float copy of the output is ever made;
        else (another factor, or ``quantize=False`` for FLUX's pre-pass) as float32. With
        ``canvas_dir`` too (and an output past ``canvas_min_pixels``), the last pass goes tile
        by tile into a ``Canvas`` file there (in 16 bits when another factor follows) and
        comes back as an ``OutputImage``, resampled band by band as it is read
        (``resample_bands``): host memory then follows the tile, not the output. The canvas
        goes with ``OutputImage.close`` or its folder."""
        started = time.perf_counter()
        loaded = self.load(model_name, use_fp16)
        desc = loaded.descriptor
        scale = int(desc.scale)  # type: ignore[attr-defined]
        context = self.context if self.context is not None else context_for(
            desc.architecture.id)  # type: ignore[attr-defined]
        passes = self.plan(image.width, image.height, plan, scale)
        if isinstance(image.rgb, Canvas) and (passes.shrinks_input or not passes.passes):
            # An upload on disk that is resampled whole: read into memory first.
            image = image.with_pixels(image.rgb.read_rows(0, image.height), image.alpha)
        x: PassInput
        if isinstance(image.rgb, Canvas):  # on disk: each window is read as it is cut
            x = image.rgb
        else:
            # A view in the decoded layout: each window is made contiguous as it is cut, so
            # the image is never copied whole (a quarter of the output's bytes at x4, in
            # float32; less as the upload's integers, which each window is converted from).
            x = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
            if passes.shrinks_input:  # one pass would pass the output cap: shrink it first
                width, height = passes.pass_input
                x = resample(torch.from_numpy(unit_float(image.rgb)).permute(2, 0, 1)[None],
                             height, width)
            if self.device.type == "cuda":
                x = x.pin_memory()  # tiles go to the GPU without a staging copy
        fn = self._model_fn(loaded)
        tile = tile_size or self.auto_tile_size(*input_size(x), loaded.dtype, context)
        if self.device.type == "cpu":  # the CPU tile bounds host memory, whatever was asked
            tile = min(tile, self.cpu_tile_size)
        exact = not passes.resampled
        if plan.output_width * plan.output_height <= self.canvas_min_pixels:
            canvas_dir = None
        counts = {"tiles": 0, "oom_retries": 0, "model_seconds": 0.0}
        for pass_index in range(passes.passes):
            last = pass_index == passes.passes - 1
            h, w = input_size(x)
            if last and quantize and canvas_dir is not None:
                # To be resampled: kept in 16 bits, then read band by band at the plan's size.
                bits = image.bit_depth if exact else 16
                sink = CanvasSink(Canvas(canvas_dir, h * scale, w * scale, 3,
                                         np.uint16 if bits == 16 else np.uint8), bits)
            elif last and exact and quantize:
                sink = QuantizedSink(3, h * scale, w * scale, image.bit_depth, self.device)
            else:
                sink = TensorSink(3, h * scale, w * scale, torch.device("cpu"))
            tile = self._run_pass(x, fn, scale, tile, context, loaded.dtype, sink, counts,
                                  passes.passes - pass_index, progress, should_stop)
            x = sink.result()

        if isinstance(x, Canvas):  # on disk; resampled strip by strip when read
            size = (plan.output_height, plan.output_width)
            pixels = x if exact else ResampledPlane(x, *size, image.bit_depth)
            alpha_plane = None if image.alpha is None else ResampledAlpha(
                image.alpha, plan.output_width // image.width, image.bit_depth) if exact else \
                ResampledPlane(FloatPlane(image.alpha), *size, image.bit_depth)
            return EsrganResult(OutputImage(pixels, alpha_plane, image.color, image.bit_depth,
                                            image.icc_profile, image.source_format,
                                            metadata=image.metadata),
                                self._stats(model_name, desc, scale, passes, tile, context,
                                            counts, loaded, started))
        if isinstance(x, np.ndarray):  # quantized already, at the planned size
            rgb = x
        else:
            if not x.is_floating_point():  # no model pass ran (a factor of 1 or less)
                x = torch.from_numpy(unit_float(image.rgb)).permute(2, 0, 1)[None]
            rgb = np.ascontiguousarray(
                resample(x, plan.output_height, plan.output_width)[0].permute(1, 2, 0).numpy())
        alpha = None if image.alpha is None else resample_plane(
            image.alpha, plan.output_height, plan.output_width)
        if alpha is not None and rgb.dtype != np.float32:
            alpha = quantize_plane(alpha, image.bit_depth)
        return EsrganResult(image.with_pixels(rgb, alpha), self._stats(
            model_name, desc, scale, passes, tile, context, counts, loaded, started))

    def _stats(self, model_name: str, desc, scale: int, passes: PassPlan, tile: int,
               context: int, counts: dict, loaded: LoadedModel, started: float) -> dict:
        return {
            "model": model_name,
            "architecture": desc.architecture.name,  # type: ignore[attr-defined]
            "model_scale": scale,
            "passes": passes.passes,
            "pass_input": list(passes.pass_input),
            "computed_pixels": passes.computed_pixels,
            "tile_size": tile,
            "context": context,
            "tiles": counts["tiles"],
            "oom_retries": counts["oom_retries"],
            "device": str(self.device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "model_seconds": round(counts["model_seconds"], 3),
            "engine_seconds": round(time.perf_counter() - started, 3),
        }

    def _run_pass(self, x: PassInput, fn, scale: int, tile: int, context: int,
                  dtype: torch.dtype, sink, counts: dict, passes_left: int,
                  progress: ProgressFn | None, should_stop: Callable[[], bool] | None) -> int:
        """One model pass over ``x`` into ``sink``; on an out-of-memory error the pass is run
        again with half the tile. Returns the tile size it ran with."""
        while True:
            h, w = input_size(x)
            # Tiles still to do: this pass and the ones after it (at this tile size).
            total = counts["tiles"] + sum(
                count_tiles(h * scale**k, w * scale**k, tile, context)
                for k in range(passes_left))
            done_before = counts["tiles"]

            def on_tile(total: int = total) -> None:
                counts["tiles"] += 1
                if progress:
                    progress(counts["tiles"], total)
                if should_stop and should_stop():
                    raise UpscaleCancelled()

            if should_stop and should_stop():
                raise UpscaleCancelled()
            t0 = time.perf_counter()
            try:
                run_tiled(x, fn, scale, tile, context, sink.put, on_tile,
                          batch=self.batch_size(tile, context, dtype))
                return tile
            except Exception as exc:
                if not _is_oom(exc) or tile // 2 < MIN_TILE:
                    raise
                # Out of memory: free what the failed pass held, halve the tile, redo pass.
                counts["tiles"] = done_before
                counts["oom_retries"] += 1
                tile //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                else:
                    gc.collect()
            finally:
                counts["model_seconds"] += time.perf_counter() - t0
