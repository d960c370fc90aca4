"""The colour-drift figures of a fidelity report summed row band by row band, so a report never
holds a ΔE2000 map at the input's size (a 94 MP input's would be 376 MB, its float copies
more): the mean, the 95th percentile from a fine histogram, and each heat-map cell's mean."""

from __future__ import annotations

import numpy as np

# The p95 is reported to 4 decimals: a bin's middle is within DE_BIN / 2 of any value in it,
# so the histogram's p95 is within that of numpy's (linear) percentile of the same values.
DE_BIN = 1e-4
DE_MAX = 150.0  # CIEDE2000 between any two sRGB colours stays under ~130; beyond: last bin
_BINS = int(DE_MAX / DE_BIN)


class DriftStats:
    """ΔE2000 rows of an ``in_h`` x ``in_w`` image fed top to bottom (``add``), each pixel in
    the heat-map cell its centre falls in (cell edges in output pixels, the output being
    ``out_h`` x ``out_w``)."""

    def __init__(self, in_h: int, in_w: int, row_edges: tuple[int, ...],
                 col_edges: tuple[int, ...], out_h: int, out_w: int):
        cy = (np.arange(in_h) + 0.5) * out_h / in_h
        cx = (np.arange(in_w) + 0.5) * out_w / in_w
        self.rows, self.cols = len(row_edges) - 1, len(col_edges) - 1
        self._row_cell = np.clip(np.searchsorted(row_edges, cy, "right") - 1, 0, self.rows - 1)
        self._col_cell = np.clip(np.searchsorted(col_edges, cx, "right") - 1, 0, self.cols - 1)
        cells = self.rows * self.cols
        self._sums = np.zeros(cells, np.float64)
        self._counts = np.zeros(cells, np.int64)
        self._hist = np.zeros(_BINS, np.int64)
        self._total, self._n = 0.0, 0

    def add(self, top: int, de: np.ndarray) -> None:
        """ΔE2000 of input rows ``top`` .. ``top + len(de)`` (n x in_w)."""
        flat = de.ravel()
        cell = (self._row_cell[top:top + de.shape[0], None] * self.cols
                + self._col_cell[None, :]).ravel()
        self._sums += np.bincount(cell, weights=flat, minlength=self._sums.size)
        self._counts += np.bincount(cell, minlength=self._counts.size)
        self._total += float(flat.sum(dtype=np.float64))
        self._n += flat.size
        bins = np.minimum((flat / DE_BIN).astype(np.int64), _BINS - 1)
        low = int(bins.min())  # counted over the band's own range: a small array
        counts = np.bincount(bins - low)
        self._hist[low:low + counts.size] += counts

    @property
    def mean(self) -> float:
        return self._total / max(1, self._n)

    def percentile(self, q: float) -> float:
        """As ``np.percentile(values, q)`` (linear between the two nearest ranks), each value
        read as its bin's middle."""
        rank = q / 100 * (self._n - 1)
        below = int(rank)
        cum = np.cumsum(self._hist)
        lo, hi = np.searchsorted(cum, [below, min(below + 1, self._n - 1)], "right")
        return float((lo + 0.5 + (rank - below) * (hi - lo)) * DE_BIN)

    def cell_means(self) -> np.ndarray:
        """rows x cols: each cell's mean ΔE; the image's mean where no pixel centre fell."""
        means = np.full(self._sums.size, self.mean)
        hit = self._counts > 0
        means[hit] = self._sums[hit] / self._counts[hit]
        return means.reshape(self.rows, self.cols)
