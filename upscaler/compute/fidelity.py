"""How faithful an upscale is: colour drift (CIEDE2000) between the output, area-averaged back to
the input's size, and the input; and a seam score over the tile borders. Both read the output
as row strips, top to bottom (a gigapixel output on disk strip by strip), and each band of input
rows is compared as soon as it is covered: memory is a strip and a band of the input, whatever
the sizes. Design: docs/design/fidelity.md
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from upscaler.compute.drift_stats import DriftStats

if TYPE_CHECKING:
    from upscaler.compute.canvas import Plane

Strip = tuple[int, np.ndarray]  # (top row, rows H_strip x W x C): uint8, uint16 or float
Box = tuple[int, int, int, int]  # left, top, right, bottom (output px), as crop boxes are
CHUNK_PIXELS = 1 << 20  # work arrays (float64 sums) are cut to this many pixels at a time
LAB_CHUNK_PIXELS = 1 << 18  # Lab conversions in float32, a cache-sized chunk at a time
MAX_TILES = 4096  # the heat map's cells at most: finer grids are coarsened


@dataclass(frozen=True)
class TileGrid:
    """Tile borders in output pixels: row edges (0, ..., height) and column edges (0, ...,
    width). Inner edges are the borders the seam score looks at."""

    row_edges: tuple[int, ...]
    col_edges: tuple[int, ...]

    @property
    def tiles(self) -> int:
        return (len(self.row_edges) - 1) * (len(self.col_edges) - 1)

    def coarsened(self, max_tiles: int = MAX_TILES) -> TileGrid:
        """Every k-th edge kept (k the same on both axes) until at most ``max_tiles`` cells."""
        k = 1
        grid = self
        while grid.tiles > max_tiles:
            k += 1
            grid = TileGrid(_every(self.row_edges, k), _every(self.col_edges, k))
        return grid


def _every(edges: tuple[int, ...], k: int) -> tuple[int, ...]:
    kept = edges[:-1:k]
    return (*kept, edges[-1])


def single_tile(height: int, width: int) -> TileGrid:
    return TileGrid((0, height), (0, width))


def usdu_grid(height: int, width: int, tile: int) -> TileGrid:
    """Ultimate SD Upscale's tile rects (``engines.usdu.plan_tiles``): multiples of ``tile``."""
    return TileGrid((*range(0, height, tile), height), (*range(0, width, tile), width))


def esrgan_grid(height: int, width: int, pass_input: tuple[int, int], model_scale: int,
                passes: int, tile: int, context: int) -> TileGrid:
    """The cores of ESRGAN's last pass (``engines.tiling.axis_spans``), scaled to the output
    (``height`` x ``width``, before any crop: the pass's output resampled to the plan)."""
    from upscaler.compute.engines.tiling import axis_spans  # torch: only where used

    last_w, last_h = (side * model_scale ** (passes - 1) for side in pass_input)

    def edges(length: int, out: int) -> tuple[int, ...]:
        spans = axis_spans(length, tile, context)
        inner = [round(s.core_start * out / length) for s in spans[1:]]
        return (0, *inner, out)

    return TileGrid(edges(last_h, height), edges(last_w, width))


@dataclass(frozen=True)
class TileDrift:
    box: Box
    delta_e_mean: float


@dataclass(frozen=True)
class FidelityReport:
    delta_e_mean: float
    delta_e_p95: float
    seam_score: float | None  # None: one tile, no border to look at
    tiles: list[TileDrift]  # the heat map: ``grid`` coarsened to MAX_TILES cells
    grid: tuple[int, int]  # rows, cols of ``tiles``


def as_unit_rgb(rows: np.ndarray) -> np.ndarray:
    """Pixels as float32 RGB in [0, 1]: integers by their type's range, gray repeated, alpha
    dropped."""
    if rows.ndim == 2:
        rows = rows[..., None]
    if rows.shape[-1] in (1, 2):  # gray, gray + alpha
        rows = np.repeat(rows[..., :1], 3, axis=-1)
    rows = rows[..., :3]
    if rows.dtype == np.uint8:
        return rows.astype(np.float32) / 255.0
    if rows.dtype == np.uint16:
        return rows.astype(np.float32) / 65535.0
    return np.clip(rows.astype(np.float32, copy=False), 0.0, 1.0)


def _rgb_view(rows: np.ndarray) -> tuple[np.ndarray, float]:
    """H x W x 3 of the rows as they are (a view where it can be: integers are not converted
    whole) and the factor that maps its values to [0, 1]."""
    if rows.ndim == 2:
        rows = rows[..., None]
    if rows.shape[-1] in (1, 2):
        rows = np.broadcast_to(rows[..., :1], (*rows.shape[:2], 3))
    rows = rows[..., :3]
    if rows.dtype == np.uint8:
        return rows, 1 / 255.0
    if rows.dtype == np.uint16:
        return rows, 1 / 65535.0
    return np.clip(rows, 0.0, 1.0), 1.0


def array_strips(array: np.ndarray, rows: int = 256) -> Iterator[Strip]:
    """Row strips of an in-memory image (views: nothing copied)."""
    for top in range(0, array.shape[0], rows):
        yield top, array[top:top + rows]


def _row_chunks(rows: np.ndarray, pixels: int = CHUNK_PIXELS) -> Iterator[tuple[int, np.ndarray]]:
    step = max(1, pixels // max(1, rows.shape[1]))
    for y in range(0, rows.shape[0], step):
        yield y, rows[y:y + step]


# --- area averaging back to the input's size ---------------------------------------------------

class AreaAverager:
    """The output (``out_h`` x ``out_w``) area-averaged to ``in_h`` x ``in_w``, fed strips top
    to bottom: each input pixel is the mean of the output area it covers, partly covered
    output pixels weighted by the part (exact box averaging for integer factors). Rows go
    through the running integral of the rows seen (float64), evaluated at each input row's
    fractional edges; columns the same way within a strip. Finished rows wait in ``take()``
    (the report takes them as they come: nothing at the input's size is kept) or are kept
    whole in ``result``."""

    def __init__(self, out_h: int, out_w: int, in_h: int, in_w: int):
        self.out_h, self.out_w, self.in_h, self.in_w = out_h, out_w, in_h, in_w
        self.sy, self.sx = out_h / in_h, out_w / in_w
        self._finished: list[np.ndarray] = []  # input rows done and not yet taken
        self._taken = 0  # input rows taken
        self._total = np.zeros((in_w, 3), np.float64)  # sum of the rows seen (columns reduced)
        self._next_row = 0
        self._edge = 0  # the next input row edge to evaluate (edge i at output row i * sy)
        self._at_edge = np.zeros((in_w, 3), np.float64)  # the integral at the last edge
        col = np.arange(in_w + 1, dtype=np.float64) * self.sx
        self._col_idx = np.minimum(np.floor(col).astype(np.int64), out_w - 1)
        self._col_frac = (col - self._col_idx)[None, :, None]
        self._int_sx = int(round(self.sx)) if abs(self.sx - round(self.sx)) < 1e-9 else 0

    def _reduce_columns(self, rows: np.ndarray) -> np.ndarray:
        """h x out_w x 3 -> h x in_w x 3 (float64): each input column's mean."""
        if self._int_sx:
            # k strided adds (integers as integers: no float copy of the strip) run several
            # times faster than numpy's sum over a short middle axis.
            k = self._int_sx
            acc = rows[:, 0::k].astype(np.uint32 if rows.dtype.kind == "u" else np.float64)
            for j in range(1, k):
                acc += rows[:, j::k]
            return acc / k
        cum = np.zeros((rows.shape[0], self.out_w + 1, 3), np.float64)
        np.cumsum(rows, axis=1, dtype=np.float64, out=cum[:, 1:])
        i = self._col_idx
        at = cum[:, i] + self._col_frac * (cum[:, i + 1] - cum[:, i])
        return np.diff(at, axis=1) / self.sx

    def add(self, top: int, rows: np.ndarray) -> None:
        assert top == self._next_row, "strips come top to bottom, without gaps"
        view, unit = _rgb_view(rows)
        for y, chunk in _row_chunks(view):
            self._add_reduced(top + y, self._reduce_columns(chunk) * unit)
        self._next_row = top + rows.shape[0]

    def _add_reduced(self, r0: int, reduced: np.ndarray) -> None:
        h = reduced.shape[0]
        cum = np.zeros((h + 1, self.in_w, 3), np.float64)
        np.cumsum(reduced, axis=0, out=cum[1:])
        while self._edge <= self.in_h:
            b = self.out_h if self._edge == self.in_h else self._edge * self.sy
            k = math.floor(b) - r0
            if self._edge == self.in_h:
                if r0 + h < self.out_h:
                    break
                value = self._total + cum[h]
            elif k >= h:
                break
            else:
                value = self._total + cum[k] + (b - math.floor(b)) * reduced[k]
            if self._edge > 0:
                self._finished.append(((value - self._at_edge) / self.sy).astype(np.float32))
            self._at_edge = value
            self._edge += 1
        self._total += cum[h]

    def take(self) -> tuple[int, np.ndarray]:
        """(first index, n x in_w x 3 float32) of the input rows finished since the last take
        (n may be 0)."""
        top = self._taken
        rows = np.stack(self._finished) if self._finished else np.zeros((0, self.in_w, 3),
                                                                         np.float32)
        self._finished, self._taken = [], top + rows.shape[0]
        return top, rows

    @property
    def result(self) -> np.ndarray:
        """Every input row, once all strips are in (small images: ``drift``)."""
        top, rows = self.take()
        assert top == 0 and rows.shape[0] == self.in_h, "result is read once, at the end"
        return rows


# --- colour difference -------------------------------------------------------------------------

def delta_e_map(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """CIEDE2000 per pixel between two H x W x 3 images in [0, 1], both read as sRGB (an
    embedded profile is the same on both sides), converted in chunks to bound memory."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    out = np.empty(reference.shape[:2], np.float32)
    for y, chunk in _row_chunks(reference, LAB_CHUNK_PIXELS):
        h = chunk.shape[0]  # float32 throughout: twice as fast as float64, 1e-3 ΔE apart
        lab_a = rgb2lab(chunk.astype(np.float32, copy=False))
        lab_b = rgb2lab(np.clip(other[y:y + h], 0, 1).astype(np.float32, copy=False))
        out[y:y + h] = deltaE_ciede2000(lab_a, lab_b)
    return out


def drift(redrawn: np.ndarray, source: np.ndarray, block: int) -> float:
    """Mean ΔE2000 between two same-size images, each area-averaged over ``block`` x ``block``
    pixels first: the colour they agree on, not the detail one of them added."""
    h, w = redrawn.shape[:2]
    small = max(1, h // block), max(1, w // block)
    means = []
    for image in (redrawn, source):
        avg = AreaAverager(h, w, *small)
        avg.add(0, image)
        means.append(avg.result)
    return float(delta_e_map(means[1], means[0]).mean())


# --- seams -----------------------------------------------------------------------------------

class SeamMeter:
    """How much more the pixels straddling the tile borders differ than their neighbours do.
    Each inner border is cut into segments of ``SEGMENT`` px along it; in each, the summed
    |difference| of the two pixel columns (rows) straddling the border is divided by the mean
    of the same sums for the pairs near it (``REACH`` steps of the upscale factor on either
    side: the same content, and the same phase of the factor, since in an x4 upscale the
    pairs straddling the input pixels' edges, where tile borders fall, differ more than the
    pairs inside them). Per border, the median of its segments' ratios (an edge of the
    picture that happens to lie along a border moves only a few segments) over the median
    of the same ratios of its neighbours (each against the same mean), which takes out the
    skew a median of ratios has; the score is the mean over borders, weighted by their
    length. 1.0: borders look like their surroundings; a seam along one border raises it
    (2 or more: plainly seen). Only these columns and rows are read from each strip."""

    REACH = 8
    SEGMENT = 32

    def __init__(self, out_h: int, out_w: int, grid: TileGrid,
                 periods: tuple[int, int] = (1, 1)):
        self.grid = grid
        seg = self.SEGMENT
        self._cols = _Gaps(grid.col_edges, out_w, periods[1], self.REACH, -(-out_h // seg))
        self._rows = _Gaps(grid.row_edges, out_h, periods[0], self.REACH, -(-out_w // seg))
        self._last: np.ndarray | None = None  # the previous strip's last row

    def add(self, top: int, rows: np.ndarray) -> None:
        view, unit = _rgb_view(rows)
        seg, h = self.SEGMENT, view.shape[0]
        if self._cols.index.size:
            i = self._cols.index
            a, b = view[:, i].astype(np.float32), view[:, i + 1].astype(np.float32)
            diff = np.abs(b - a).sum(axis=2, dtype=np.float64) * unit  # h x gaps
            ids = (top + np.arange(h)) // seg
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            self._cols.sums[ids[starts]] += np.add.reduceat(diff, starts, axis=0)
        if self._rows.index.size:
            # Gaps g (rows g and g+1) with g+1 in this strip; row g may be the last strip's.
            lo, hi = np.searchsorted(self._rows.index, [top - 1, top + h - 1])
            for k in range(lo, hi):
                g = int(self._rows.index[k])
                upper = self._last if g < top else view[g - top]
                if upper is None:
                    continue
                lower = view[g + 1 - top].astype(np.float32)
                diff = np.abs(lower - upper.astype(np.float32)).sum(axis=1, dtype=np.float64)
                starts = np.arange(0, diff.shape[0], seg)
                self._rows.sums[:, k] += np.add.reduceat(diff, starts) * unit
        self._last = view[-1].copy()

    def score(self) -> float | None:
        if self.grid.tiles <= 1:
            return None
        ratios = [*self._cols.ratios(), *self._rows.ratios()]
        if not ratios:
            return None
        values, weights = zip(*ratios, strict=True)
        return float(np.average(values, weights=weights))


class _Gaps:
    """One axis of the seam score: the gaps (pairs of adjacent columns or rows) at inner
    borders and near them, and each one's |difference| summed per segment along it."""

    def __init__(self, edges: tuple[int, ...], size: int, period: int, reach: int,
                 segments: int):
        length = max(0, size - 1)  # gaps along the axis
        borders = sorted({e - 1 for e in edges[1:-1] if 0 < e < size})
        near = {b: [g for g in (b + j * period for j in range(-reach, reach + 1) if j)
                    if 0 <= g < length and g not in borders] for b in borders}
        self.index = np.array(sorted({*borders, *(g for n in near.values() for g in n)}),
                              np.int64)
        at = {int(g): k for k, g in enumerate(self.index)}
        self._pairs = [(at[b], [at[g] for g in n]) for b, n in near.items() if n]
        self.sums = np.zeros((segments, self.index.size), np.float64)

    def ratios(self) -> list[tuple[float, int]]:
        """Per border: its ratio (see ``SeamMeter``) and its segments (its weight)."""
        eps = 1e-6
        out = []
        for b, n in self._pairs:
            near = self.sums[:, n].mean(axis=1, keepdims=True) + eps
            border = np.median((self.sums[:, b] + eps) / near[:, 0])
            reference = np.median((self.sums[:, n] + eps) / near)
            out.append((float(border / reference), int(near.size)))
        return out


# --- the report --------------------------------------------------------------------------------

def _period(out: int, length: int) -> int:
    """The upscale factor along an axis when it is a whole number (else 1)."""
    return out // length if out % length == 0 and out >= length else 1


def measure_fidelity(source_rgb: np.ndarray | Plane, strips: Iterable[Strip], out_h: int,
                     out_w: int, grid: TileGrid | None = None,
                     max_tiles: int = MAX_TILES) -> FidelityReport:
    """The report of one job: ``source_rgb`` the decoded input (H x W x 3: float in [0, 1],
    or integers; in memory, or a ``Plane`` such as an upload's canvas on disk), ``strips`` the
    engine's uncropped output (``out_h`` x ``out_w``) top to bottom, ``grid`` its tile borders
    (None: one tile). Each band of input rows is compared as soon as the output's strips
    cover it: memory follows the input's width, not its area."""
    grid = grid or single_tile(out_h, out_w)
    in_h, in_w = (source_rgb.shape[:2] if isinstance(source_rgb, np.ndarray)
                  else (source_rgb.height, source_rgb.width))
    averager = AreaAverager(out_h, out_w, in_h, in_w)
    heat = grid.coarsened(max_tiles)
    drift_stats = DriftStats(in_h, in_w, heat.row_edges, heat.col_edges, out_h, out_w)
    periods = (_period(out_h, in_h), _period(out_w, in_w))
    seams = SeamMeter(out_h, out_w, grid, periods) if grid.tiles > 1 else None
    for top, rows in strips:
        averager.add(top, rows)
        if seams is not None:
            seams.add(top, rows)
        first, averaged = averager.take()
        if len(averaged):
            source = (source_rgb[first:first + len(averaged)]
                      if isinstance(source_rgb, np.ndarray)
                      else source_rgb.read_rows(first, len(averaged)))
            drift_stats.add(first, delta_e_map(as_unit_rgb(source), averaged))
    means = drift_stats.cell_means()
    rows, cols = means.shape
    return FidelityReport(
        delta_e_mean=round(drift_stats.mean, 4),
        delta_e_p95=round(drift_stats.percentile(95), 4),
        seam_score=None if seams is None else round(seams.score() or 1.0, 4),
        tiles=[TileDrift((heat.col_edges[c], heat.row_edges[r], heat.col_edges[c + 1],
                          heat.row_edges[r + 1]), round(float(means[r, c]), 3))
               for r in range(rows) for c in range(cols)],
        grid=(rows, cols))
