"""A finished job's fidelity report (``quality``), as its engine deployment measures it
(``upscaler.compute.fidelity``) and the job record, the status answer and the events carry it."""

from __future__ import annotations

from upscaler.compute.fidelity import FidelityReport
from upscaler.domain.job_stats import Contract


class TileQuality(Contract):
    """One heat-map cell: its box in output pixels (left, top, right, bottom, before any
    crop) and the mean ΔE2000 of the input pixels it covers."""

    box: tuple[int, int, int, int]
    delta_e_mean: float


class Quality(Contract):
    delta_e_mean: float  # CIEDE2000, output area-averaged to the input's size vs the input
    delta_e_p95: float
    seam_score: float | None = None  # tile borders' gradient energy over the rest; None: 1 tile
    tiles_rerun: int = 0  # FLUX: tiles redrawn again because they drifted
    tile_grid: tuple[int, int] = (1, 1)  # rows, cols of ``tiles``
    tiles: list[TileQuality] = []

    @classmethod
    def from_report(cls, report: FidelityReport, tiles_rerun: int = 0) -> Quality:
        return cls(delta_e_mean=report.delta_e_mean, delta_e_p95=report.delta_e_p95,
                   seam_score=report.seam_score, tiles_rerun=tiles_rerun,
                   tile_grid=report.grid,
                   tiles=[TileQuality(box=t.box, delta_e_mean=t.delta_e_mean)
                          for t in report.tiles])
