"""Tiled inference with context overlap and feathered blending.

Windows of ``tile`` x ``tile`` input pixels step over the image so that neighbours overlap by at
least ``2 * overlap`` pixels (the last window is aligned to the image edge). Each window is run
whole; its output is weighted by a separable ramp that is zero within ``overlap / 2`` of an inner
window edge (where the model lacked context) and rises to one over the next ``overlap`` pixels.
The weighted sum is divided by the summed weights, so every pixel comes from windows that saw at
least ``overlap / 2`` pixels of context, and tile borders fade into each other without seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    y0: int
    y1: int
    x0: int
    x1: int


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: stride ``tile - 2*overlap``, last window flush with the end."""
    if length <= tile:
        return [0]
    stride = max(1, tile - 2 * overlap)
    count = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(count)]
    return sorted(set(starts))


def plan_windows(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    overlap = effective_overlap(tile, overlap)
    return [Window(y, min(y + tile, height), x, min(x + tile, width))
            for y in window_starts(height, tile, overlap)
            for x in window_starts(width, tile, overlap)]


def effective_overlap(tile: int, overlap: int) -> int:
    # A window must keep a core: at most a quarter of it goes to context on each side.
    return max(0, min(overlap, tile // 4))


def _ramp(length: int, lead: bool, trail: bool, overlap: int) -> torch.Tensor:
    """1-D weights: 0 in the first overlap/2 px of an inner edge, rising to 1 over overlap px."""
    w = torch.ones(length, dtype=torch.float32)
    if overlap <= 0:
        return w
    pos = torch.arange(length, dtype=torch.float32) + 0.5
    rise = ((pos - overlap / 2) / overlap).clamp(0, 1)
    if lead:
        w = torch.minimum(w, rise)
    if trail:
        w = torch.minimum(w, rise.flip(0))
    return w


def count_tiles(height: int, width: int, tile: int, overlap: int) -> int:
    return len(plan_windows(height, width, tile, overlap))


def run_tiled(
    image: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    tile: int,
    overlap: int,
    on_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` (N,C,h,w) -> (N,C',h*scale,w*scale) to ``image`` (1,C,H,W) tile by tile.

    ``fn`` runs wherever its weights live; accumulation happens on the CPU in float32 so the
    output size is bounded by host memory, not by the accelerator.
    """
    _, _, height, width = image.shape
    overlap = effective_overlap(tile, overlap)
    windows = plan_windows(height, width, tile, overlap)
    if len(windows) == 1:
        out = fn(image).float().cpu()
        if on_tile:
            on_tile()
        return out

    acc: torch.Tensor | None = None
    weight_sum = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
    o = overlap * scale
    for win in windows:
        out = fn(image[:, :, win.y0:win.y1, win.x0:win.x1]).float().cpu()
        if acc is None:
            acc = torch.zeros(1, out.shape[1], height * scale, width * scale, dtype=torch.float32)
        oy0, oy1, ox0, ox1 = win.y0 * scale, win.y1 * scale, win.x0 * scale, win.x1 * scale
        wy = _ramp(oy1 - oy0, win.y0 > 0, win.y1 < height, o)
        wx = _ramp(ox1 - ox0, win.x0 > 0, win.x1 < width, o)
        weight = (wy[:, None] * wx[None, :])[None, None]
        acc[:, :, oy0:oy1, ox0:ox1] += out * weight
        weight_sum[:, :, oy0:oy1, ox0:ox1] += weight
        if on_tile:
            on_tile()
    assert acc is not None
    return acc / weight_sum.clamp_min(1e-8)
