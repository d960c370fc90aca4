"""Tiled inference that gives the untiled output: each tile's core is run with enough context
to cover the model's receptive field, and only the core is kept. Design: docs/design/engines.md
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from upscaler.compute.canvas_file import Canvas

# A model pass's input: a (1, C, H, W) tensor, or a decoded upload on disk (H x W x C) read
# window by window.
PassInput = torch.Tensor | Canvas


def input_size(image: PassInput) -> tuple[int, int]:
    """(height, width) of a pass's input."""
    if isinstance(image, Canvas):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])


def _crop(image: PassInput, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    if isinstance(image, Canvas):  # only the window's bytes are read
        return torch.from_numpy(image.block(y0, y1, x0, x1)).permute(2, 0, 1)[None]
    return image[:, :, y0:y1, x0:x1]

# Input pixels of context each tile gets on every side, by spandrel architecture id.
CONTEXT_PX: Mapping[str, int] = {
    # RRDB (4x-UltraSharp, Remacri, AnimeSharp, Real-ESRGAN x4plus): a deep receptive field
    # whose effect fades; on Real-ESRGAN x4plus, tile 64: 10 px 34 dB, 32 px 49 dB, 64 px 71 dB.
    "ESRGAN": 64,
    # SRVGG compact: a chain of 3x3 convolutions (32 in realesr-general-x4v3): a receptive
    # radius of 34 px, all of it inside 40 px of context, so tiles are exact.
    "Compact": 40,
    "SPAN": 32,
    "PLKSR": 48,  # large 17x17 kernels
    "RealCUGAN": 48,
    "OmniSR": 48,
    "SAFMN": 32,
    # Attention over windows or channels that reach the whole input (DAT's channel attention,
    # SwinIR/HAT's shifted windows): no context makes tiles exact; this much keeps seams
    # invisible, and bigger tiles are better still.
    "DAT": 64,
    "SwinIR": 64,
    "Swin2SR": 64,
    "HAT": 64,
    "ATD": 64,
}
DEFAULT_CONTEXT_PX = 64


def context_for(architecture: str) -> int:
    return CONTEXT_PX.get(architecture, DEFAULT_CONTEXT_PX)


@dataclass(frozen=True)
class Span:
    """One axis of a tile: the window run through the model, and the core kept of it."""

    start: int
    stop: int
    core_start: int
    core_stop: int


@dataclass(frozen=True)
class Window:
    y: Span
    x: Span

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.stop - self.y.start, self.x.stop - self.x.start


def axis_spans(length: int, tile: int, context: int) -> list[Span]:
    """Cores of ``tile`` px at most along an axis, each run in a window with ``context`` px
    on both sides (within the image: at its edges the window moves inwards)."""
    if length <= tile:
        return [Span(0, length, 0, length)]
    count = math.ceil(length / tile)
    size = min(length, math.ceil(length / count) + 2 * context)
    spans = []
    for i in range(count):
        core_start, core_stop = round(i * length / count), round((i + 1) * length / count)
        start = min(max(0, core_start - context), length - size)
        spans.append(Span(start, start + size, core_start, core_stop))
    return spans


def plan_windows(height: int, width: int, tile: int, context: int) -> list[Window]:
    return [Window(y, x) for y in axis_spans(height, tile, context)
            for x in axis_spans(width, tile, context)]


def count_tiles(height: int, width: int, tile: int, context: int) -> int:
    return len(axis_spans(height, tile, context)) * len(axis_spans(width, tile, context))


def tiling_cost(height: int, width: int, tile: int, context: int) -> float:
    """Pixels run through the model over the image's pixels: what tiling costs over one
    untiled pass."""
    return sum(w.shape[0] * w.shape[1] for w in plan_windows(height, width, tile, context)) / (
        height * width)


# --- where the cores go ----------------------------------------------------------------------

class TensorSink:
    """Cores gathered into one float tensor (N, C, H, W), on ``device``: what the next pass
    reads, or what is resampled to the planned size."""

    def __init__(self, channels: int, height: int, width: int, device: torch.device):
        self.out = torch.empty(1, channels, height, width, dtype=torch.float32, device=device)

    def put(self, y0: int, y1: int, x0: int, x1: int, core: torch.Tensor) -> None:
        self.out[:, :, y0:y1, x0:x1] = core

    def result(self) -> torch.Tensor:
        return self.out


class QuantizedSink:
    """Cores quantized where they are made (``bits`` per channel, as the file will have them)
    into one H x W x C integer image on ``device``, moved to the host once, at the end: the
    result costs its file's bytes, not four times them as float32 would."""

    def __init__(self, channels: int, height: int, width: int, bits: int,
                 device: torch.device):
        self.top = 65535.0 if bits == 16 else 255.0
        # torch's uint16 has few CUDA kernels: 16-bit cores wait there as int32 instead.
        dtype = torch.uint8 if bits == 8 else (
            torch.int32 if device.type == "cuda" else torch.uint16)
        self.out = torch.empty(height, width, channels, dtype=dtype, device=device)

    def put(self, y0: int, y1: int, x0: int, x1: int, core: torch.Tensor) -> None:
        # The same rounding as upscaler.compute.images' quantizer: clip, scale, +0.5, truncate; in
        # place, on the model's own output (a window's worth of float32 temporaries less).
        core = core[0].clamp_(0.0, 1.0).mul_(self.top).add_(0.5)
        self.out[y0:y1, x0:x1] = core.permute(1, 2, 0)  # the cast truncates, as astype

    def result(self):
        out = self.out
        if out.device.type == "cuda":  # one copy over PCIe, into pinned host memory
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=False)
            out = host
        array = out.numpy()
        return array.astype("uint16") if array.dtype.name == "int32" else array


# --- running -----------------------------------------------------------------------------

def _batches(windows: list[Window], batch: int) -> Iterator[list[Window]]:
    """Runs of equal-shape windows, at most ``batch`` long (shapes differ only when an image
    side is shorter than a tile)."""
    run: list[Window] = []
    for window in windows:
        if run and (len(run) == batch or run[0].shape != window.shape):
            yield run
            run = []
        run.append(window)
    if run:
        yield run


def run_tiled(
    image: PassInput,
    fn: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    tile: int,
    context: int,
    put: Callable[[int, int, int, int, torch.Tensor], None],
    on_tile: Callable[[], None] | None = None,
    batch: int = 1,
) -> None:
    """Apply ``fn`` ((N, C, h, w) -> (N, C', h*scale, w*scale)) to ``image`` (1, C, H, W) tile
    by tile, ``batch`` tiles per call; each core's output goes to ``put(y0, y1, x0, x1, t)``
    in output coordinates."""
    height, width = input_size(image)
    with torch.inference_mode():  # no autograd state, and sinks may reuse outputs in place
        _run(image, fn, scale, plan_windows(height, width, tile, context), put, on_tile, batch)


def _run(image, fn, scale, windows, put, on_tile, batch) -> None:
    for run in _batches(windows, batch):
        crops = [_crop(image, w.y.start, w.y.stop, w.x.start, w.x.stop) for w in run]
        out = fn(torch.cat(crops) if len(crops) > 1 else crops[0])
        for i, w in enumerate(run):
            cy0, cy1 = (w.y.core_start - w.y.start) * scale, (w.y.core_stop - w.y.start) * scale
            cx0, cx1 = (w.x.core_start - w.x.start) * scale, (w.x.core_stop - w.x.start) * scale
            put(w.y.core_start * scale, w.y.core_stop * scale, w.x.core_start * scale,
                w.x.core_stop * scale, out[i:i + 1, :, cy0:cy1, cx0:cx1])
            if on_tile:
                on_tile()
