"""The fidelity report of a finished job (``upscaler.compute.fidelity``), measured by its
engine deployment on the uncropped output before it is encoded, and counted in the metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from upscaler import ray_support
from upscaler.compute.canvas import OutputImage
from upscaler.compute.fidelity import (
    TileGrid,
    array_strips,
    esrgan_grid,
    measure_fidelity,
)
from upscaler.compute.images import DecodedImage
from upscaler.domain.job_stats import EsrganStats
from upscaler.domain.quality import Quality

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Fidelity:
    """What the report compares the output with: the decoded input, the output's tile
    borders (None: one tile), and FLUX's re-run tiles."""

    source: DecodedImage
    grid: TileGrid | None = None
    tiles_rerun: int = 0


def esrgan_fidelity(source: DecodedImage, stats: EsrganStats | dict, height: int,
                    width: int) -> Fidelity:
    """ESRGAN's tile grid: its last pass's cores, scaled to the output."""
    s = stats if isinstance(stats, dict) else stats.model_dump()
    grid = esrgan_grid(height, width, tuple(s["pass_input"]), s["model_scale"], s["passes"],
                       s["tile_size"], s["context"])
    return Fidelity(source, grid)


def measure_quality(engine: str, fidelity: Fidelity | None,
                    output: DecodedImage | OutputImage) -> tuple[Quality | None, float]:
    """The report and its seconds, read from the output's row strips (in memory, or from its
    on-disk canvas: never the whole output as float). A report that fails is logged and left
    out: it never fails the job it describes."""
    if fidelity is None:
        return None, 0.0
    started = time.perf_counter()
    try:
        report = measure_fidelity(fidelity.source.rgb,
                                  array_strips(output.rgb) if isinstance(output, DecodedImage)
                                  else output.strips(),
                                  output.height, output.width, fidelity.grid)
    except Exception:  # noqa: BLE001 - a report, not the job
        logger.exception("fidelity report failed")
        return None, round(time.perf_counter() - started, 3)
    quality = Quality.from_report(report, fidelity.tiles_rerun)
    ray_support.observe(ray_support.delta_e_mean, quality.delta_e_mean, engine=engine)
    if quality.seam_score is not None:
        ray_support.observe(ray_support.seam_score, quality.seam_score, engine=engine)
    return quality, round(time.perf_counter() - started, 3)
