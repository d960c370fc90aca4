"""Ultimate SD Upscale's tiling, made parallel: split, redraw tiles independently, blend back.
Plain numpy/torch: the redraw function is passed in (FLUX img2img in production, identity in
tests). Design: docs/design/engines.md
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the coordinator's module loads light
    from pathlib import Path

    import torch

    from upscaler.compute.canvas import OutputImage
    from upscaler.compute.canvas_file import Canvas
    from upscaler.compute.engines.usdu_disk import DiskImage
    from upscaler.compute.images import DecodedImage

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
    import torch
    import torch.nn.functional as F
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


def tile_mask(tile: Tile, mask_blur: int) -> np.ndarray:
    """The tile's paste weight over its crop: its rect blurred; image edges stay hard."""
    import torch
    import torch.nn.functional as F
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
    import torch
    import torch.nn.functional as F
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
    import torch
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


Rect = tuple[int, int, int, int]  # y0, y1, x0, x1


def overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


class TiledCanvas:
    """Accumulates redrawn tiles; ``image()`` is the blend of everything pasted so far over the
    source (pixels no tile has reached yet show the source).

    ``origin`` makes it a window onto a larger image (``source`` is then the window's pixels):
    every step is elementwise, so a window gives bit for bit the whole canvas's pixels there,
    and pasting a tile that does not reach the window does nothing."""

    def __init__(self, source: np.ndarray, mask_blur: int, origin: tuple[int, int] = (0, 0)):
        self.source = source.astype(np.float32)
        self.height, self.width = source.shape[:2]
        self.origin = origin
        self.window: Rect = (origin[0], origin[0] + self.height,
                             origin[1], origin[1] + self.width)
        self.mask_blur = mask_blur
        self._acc = np.zeros_like(self.source)
        self._weight = np.zeros((self.height, self.width), np.float32)
        self._base = self.source.copy()  # what the next wave's crops are cut from

    def crop(self, tile: Tile) -> np.ndarray:
        cy0, cy1, cx0, cx1 = tile.crop
        oy, ox = self.origin
        assert cy0 >= oy and cx0 >= ox and cy1 <= oy + self.height and cx1 <= ox + self.width
        return self._base[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox].copy()

    def paste(self, tile: Tile, redrawn: np.ndarray) -> None:
        if not overlaps(tile.crop, self.window):
            return
        cy0, cy1, cx0, cx1 = tile.crop
        wy0, wy1, wx0, wx1 = self.window
        y0, y1, x0, x1 = max(cy0, wy0), min(cy1, wy1), max(cx0, wx0), min(cx1, wx1)
        mask = tile_mask(tile, self.mask_blur)[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        part = redrawn[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0].astype(np.float32)
        here = (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))
        self._acc[here] += part * mask[..., None]
        self._weight[here] += mask

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


def replay(canvas: TiledCanvas, tiles: list[Tile], outputs: Mapping[int, np.ndarray],
           before_wave: int | None = None) -> TiledCanvas:
    """The steps ``redraw_tiles`` takes on its canvas, with the tiles already drawn: every wave
    (or those before ``before_wave``, leaving the canvas as that wave's crops see it). Only the
    tiles reaching the canvas's window need an output."""
    for wave in waves(tiles):
        if before_wave is not None and wave[0].wave >= before_wave:
            break
        if wave[0].wave == 2:
            canvas.start_layer()
        for tile in wave:
            if overlaps(tile.crop, canvas.window):
                canvas.paste(tile, outputs[tile.index])
        canvas.end_wave()
    if before_wave == 2:
        canvas.start_layer()
    return canvas


def _window(source: np.ndarray | Canvas, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Those pixels of an in-memory image or of an on-disk canvas (read just them)."""
    if isinstance(source, np.ndarray):
        return source[y0:y1, x0:x1]
    return source.block(y0, y1, x0, x1)


def render_crop(source: np.ndarray | Canvas, tiles: list[Tile],
                outputs: Mapping[int, np.ndarray], tile: Tile, mask_blur: int) -> np.ndarray:
    """What ``tile`` is redrawn from: the canvas as the waves before its own left it, replayed
    over its crop only (the earlier tiles ``TileSchedule.needs`` for it are in ``outputs``,
    which may read them from disk: only those reaching the crop are asked for)."""
    cy0, cy1, cx0, cx1 = tile.crop
    canvas = TiledCanvas(_window(source, cy0, cy1, cx0, cx1), mask_blur, origin=(cy0, cx0))
    return replay(canvas, tiles, outputs, before_wave=tile.wave).crop(tile)


class TileSchedule:
    """Which tiles can be drawn now. A tile needs the tiles of earlier waves whose crops reach
    its crop (their pixels are in its context); nothing else. Ready tiles come out earliest wave
    first, then those that unblock the most tiles, then by index: on few replicas the tile
    everything else waits for (the centre of a 3x2 chess grid) goes first."""

    def __init__(self, tiles: list[Tile], done: Iterable[int] = ()):
        self.tiles = {t.index: t for t in tiles}
        crops = np.array([t.crop for t in tiles], np.int64).reshape(-1, 4)
        wave = np.array([t.wave for t in tiles], np.int64)
        self.needs: dict[int, set[int]] = {}
        self._unblocks: dict[int, list[int]] = {t.index: [] for t in tiles}
        for t in tiles:  # one vectorised pass per tile: thousands of tiles stay fast
            y0, y1, x0, x1 = t.crop
            reach = ((crops[:, 0] < y1) & (y0 < crops[:, 1]) & (crops[:, 2] < x1)
                     & (x0 < crops[:, 3]) & (wave < t.wave))
            self.needs[t.index] = {tiles[j].index for j in np.flatnonzero(reach)}
            for j in self.needs[t.index]:
                self._unblocks[j].append(t.index)
        self.done: set[int] = set()
        self.running: set[int] = set()
        self._missing = {i: len(n) for i, n in self.needs.items()}
        self._ready: set[int] = {i for i, n in self._missing.items() if n == 0}
        for i in done:
            self.finish(i)

    def take_ready(self) -> list[Tile]:
        """The tiles whose crops can be cut now, in the order to send them; now running."""
        order = sorted(self._ready, key=lambda i: (self.tiles[i].wave,
                                                   -len(self._unblocks[i]), i))
        self._ready.clear()
        self.running.update(order)
        return [self.tiles[i] for i in order]

    def finish(self, index: int) -> None:
        self.running.discard(index)
        self._ready.discard(index)
        self.done.add(index)
        for j in self._unblocks[index]:
            self._missing[j] -= 1
            if self._missing[j] == 0 and j not in self.done:
                self._ready.add(j)

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.tiles)


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


BLEND_ROWS = 256  # rows of the final blend made at a time (a window canvas each)


def blend_to_canvas(source: DecodedImage | DiskImage, tiles: list[Tile],
                    outputs: Mapping[int, np.ndarray], mask_blur: int, folder: Path,
                    rows: int = BLEND_ROWS) -> OutputImage:
    """``replay(...).image()`` of the whole image, made band by band (each a window canvas:
    bit for bit the whole canvas's pixels there) and written, quantized, into a ``Canvas`` in
    ``folder``: the blend holds a band, never the whole image's accumulators. Alpha is the
    source's, quantized as it is read. A ``DiskImage`` source and ``TileFiles`` outputs are read
    a band's rows and the tiles reaching it at a time."""
    from upscaler.compute.canvas import ArrayPlane, OutputImage, Plane
    from upscaler.compute.canvas_file import Canvas
    from upscaler.compute.engines.usdu_disk import DiskImage
    from upscaler.compute.quantize import quantize_plane

    height, width = source.height, source.width
    canvas = Canvas(folder, height, width, 3, np.uint16 if source.bit_depth == 16 else np.uint8)
    for top in range(0, height, rows):
        band = _window(source.rgb, top, min(top + rows, height), 0, width)
        window = TiledCanvas(band, mask_blur, origin=(top, 0))
        canvas.write_rows(top, quantize_plane(replay(window, tiles, outputs).image(),
                                              source.bit_depth))
    if isinstance(source, DiskImage):
        alpha: Plane | None = source.alpha_plane()
    else:
        alpha = None if source.alpha is None else ArrayPlane(source.alpha, source.bit_depth)
    return OutputImage(canvas, alpha, source.color, source.bit_depth, source.icc_profile,
                       source.source_format, metadata=source.metadata)
