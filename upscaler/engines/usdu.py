"""Ultimate SD Upscale's tiling, made parallel: split, redraw tiles independently, blend back.

USDU (ComfyUI / A1111) redraws tiles one after another, each on the image as already redrawn.
Here the tiles of a wave are independent, so a wave can run on every GPU at once:

* grid: ``rows = ceil(H / tile)``, ``cols = ceil(W / tile)`` (as USDU); each tile is redrawn
  with ``padding`` pixels of context around it (the crop is shifted inside the image so it keeps
  its full size at the borders, USDU's "force uniform tiles" without resampling);
* blend: each redrawn tile is pasted through its rectangle mask blurred by ``mask_blur``, and
  overlapping masks are normalised, so an identity redraw reproduces the input exactly;
* order: ``parallel`` (one wave) or ``chess`` (USDU's chess mode as two waves: the second half
  of the tiles sees the first half already redrawn in its context);
* colour: each redrawn tile's low frequencies are replaced by the source's (wavelet colour fix,
  as StableSR) or its mean/std matched (AdaIN): the per-tile tint USDU users complain about;
* seams: optional band pass over the inner tile borders after the main waves.

Plain numpy/torch: the redraw function is passed in (FLUX img2img in production, identity in
tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ColorFix = Literal["wavelet", "adain", "none"]
TileOrder = Literal["parallel", "chess"]
SeamFix = Literal["none", "band_pass"]


@dataclass(frozen=True)
class Tile:
    index: int
    wave: int  # 0, 1 (chess), 2 (seam bands)
    # The region this tile owns (pasted through its blurred mask): y0, y1, x0, x1.
    rect: tuple[int, int, int, int]
    # The region redrawn (rect plus context), always inside the image.
    crop: tuple[int, int, int, int]


def _span(start: int, stop: int, pad: int, length: int, want: int) -> tuple[int, int]:
    """Grow [start, stop) by pad on both sides to ``want`` long, shifted to stay inside."""
    size = min(want, length)
    lo = max(0, min(start - pad, length - size))
    return lo, lo + size


def plan_tiles(height: int, width: int, tile: int, padding: int, order: TileOrder = "chess",
               seam_fix: SeamFix = "none", seam_width: int = 64) -> list[Tile]:
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    crop_h, crop_w = tile + 2 * padding, tile + 2 * padding
    tiles: list[Tile] = []
    for r in range(rows):
        for c in range(cols):
            y0, y1 = r * tile, min((r + 1) * tile, height)
            x0, x1 = c * tile, min((c + 1) * tile, width)
            crop = (*_span(y0, y1, padding, height, crop_h), *_span(x0, x1, padding, width, crop_w))
            wave = (r + c) % 2 if order == "chess" else 0
            tiles.append(Tile(len(tiles), wave, (y0, y1, x0, x1), crop))
    if seam_fix == "band_pass":
        half = seam_width // 2
        for c in range(1, cols):  # vertical borders, one band per tile row
            x = c * tile
            for r in range(rows):
                y0, y1 = r * tile, min((r + 1) * tile, height)
                rect = (y0, y1, max(0, x - half), min(width, x + half))
                crop = (*_span(y0, y1, padding, height, crop_h),
                        *_span(rect[2], rect[3], padding, width, seam_width + 2 * padding))
                tiles.append(Tile(len(tiles), 2, rect, crop))
        for r in range(1, rows):  # horizontal borders, one band per tile column
            y = r * tile
            for c in range(cols):
                x0, x1 = c * tile, min((c + 1) * tile, width)
                rect = (max(0, y - half), min(height, y + half), x0, x1)
                crop = (*_span(rect[0], rect[1], padding, height, seam_width + 2 * padding),
                        *_span(x0, x1, padding, width, crop_w))
                tiles.append(Tile(len(tiles), 2, rect, crop))
    return tiles


def waves(tiles: Iterable[Tile]) -> list[list[Tile]]:
    by_wave: dict[int, list[Tile]] = {}
    for t in tiles:
        by_wave.setdefault(t.wave, []).append(t)
    return [by_wave[w] for w in sorted(by_wave)]


def _gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return mask
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    m = mask[None, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return m[0, 0]


def tile_mask(tile: Tile, mask_blur: int, height: int, width: int) -> np.ndarray:
    """The tile's paste weight over its crop: its rect blurred; image edges stay hard."""
    cy0, cy1, cx0, cx1 = tile.crop
    y0, y1, x0, x1 = tile.rect
    mask = torch.zeros(cy1 - cy0, cx1 - cx0)
    mask[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = 1.0
    # Blurring would fade the mask where the rect reaches the crop's edge (at image borders):
    # extend it past the crop there first, so only inner borders are feathered.
    ext = max(1, 3 * mask_blur)
    pads = (ext if x0 == cx0 else 0, ext if x1 == cx1 else 0,
            ext if y0 == cy0 else 0, ext if y1 == cy1 else 0)
    big = F.pad(mask[None, None], pads, mode="replicate")[0, 0]
    blurred = _gaussian_blur(big, mask_blur / 2 if mask_blur else 0)
    blurred = blurred[pads[2]:pads[2] + mask.shape[0], pads[0]:pads[0] + mask.shape[1]]
    return blurred.numpy()


def _wavelet_low(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Low-frequency part by repeated dilated 3x3 blurs (the decomposition StableSR uses)."""
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype) / 16
    kernel = kernel.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    low = x
    for level in range(levels):
        d = 2**level
        low = F.conv2d(F.pad(low, (d, d, d, d), mode="replicate"), kernel, dilation=d,
                       groups=x.shape[1])
    return low


def color_fix(redrawn: np.ndarray, source: np.ndarray, method: ColorFix) -> np.ndarray:
    """Give the redrawn tile the source's colours (both H x W x 3 float in [0, 1])."""
    if method == "none":
        return redrawn
    if method == "adain":
        mu_r, sd_r = redrawn.mean((0, 1)), redrawn.std((0, 1)) + 1e-6
        mu_s, sd_s = source.mean((0, 1)), source.std((0, 1))
        return np.clip((redrawn - mu_r) / sd_r * sd_s + mu_s, 0, 1)
    r = torch.from_numpy(np.ascontiguousarray(redrawn.transpose(2, 0, 1)))[None]
    s = torch.from_numpy(np.ascontiguousarray(source.transpose(2, 0, 1)))[None]
    out = r - _wavelet_low(r) + _wavelet_low(s)
    return np.clip(out[0].numpy().transpose(1, 2, 0), 0, 1)


RedrawFn = Callable[[np.ndarray, Tile], np.ndarray]


class TiledCanvas:
    """Accumulates redrawn tiles; ``image()`` is the blend of everything pasted so far over the
    source (pixels no tile has reached yet show the source)."""

    def __init__(self, source: np.ndarray, mask_blur: int):
        self.source = source.astype(np.float32)
        self.height, self.width = source.shape[:2]
        self.mask_blur = mask_blur
        self._acc = np.zeros_like(self.source)
        self._weight = np.zeros((self.height, self.width), np.float32)
        self._base = self.source.copy()  # what the next wave's crops are cut from

    def crop(self, tile: Tile) -> np.ndarray:
        cy0, cy1, cx0, cx1 = tile.crop
        return self._base[cy0:cy1, cx0:cx1].copy()

    def paste(self, tile: Tile, redrawn: np.ndarray) -> None:
        cy0, cy1, cx0, cx1 = tile.crop
        mask = tile_mask(tile, self.mask_blur, self.height, self.width)
        self._acc[cy0:cy1, cx0:cx1] += redrawn * mask[..., None]
        self._weight[cy0:cy1, cx0:cx1] += mask

    def image(self) -> np.ndarray:
        w = self._weight[..., None]
        blended = self._acc / np.maximum(w, 1e-8)
        # Where masks sum to less than one (only at the start), fall back on the base.
        alpha = np.clip(w, 0, 1)
        return blended * alpha + self._base * (1 - alpha)

    def end_wave(self) -> None:
        """The next wave sees this one's result (USDU's chess order)."""
        self._base = self.image()

    def start_layer(self) -> None:
        """Seam bands paste over the finished image rather than averaging into it."""
        self._base = self.image()
        self.source = self._base
        self._acc = np.zeros_like(self._base)
        self._weight = np.zeros_like(self._weight)


def redraw_tiles(source: np.ndarray, tiles: list[Tile], redraw: RedrawFn, mask_blur: int,
                 color: ColorFix = "wavelet",
                 done: dict[int, np.ndarray] | None = None,
                 on_tile: Callable[[Tile, np.ndarray], None] | None = None) -> np.ndarray:
    """Sequential reference driver (the Serve coordinator runs each wave concurrently with the
    same TiledCanvas steps). ``done`` holds tiles already redrawn (resume): they are pasted, not
    recomputed."""
    canvas = TiledCanvas(source, mask_blur)
    done = done or {}
    for wave in waves(tiles):
        if wave[0].wave == 2:
            canvas.start_layer()
        for tile in wave:
            if tile.index in done:
                out = done[tile.index]
            else:
                crop = canvas.crop(tile)
                out = color_fix(redraw(crop, tile), crop, color)
                if on_tile:
                    on_tile(tile, out)
            canvas.paste(tile, out)
        canvas.end_wave()
    return canvas.image()
