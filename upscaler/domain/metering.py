"""What a job costs its key, from the same plans the engines run: the pixels computed (every
model pass and the resampled output, uncropped: ``upscaler.compute.passes``) and, for FLUX, the
denoising work as megapixel-steps (each tile's crop, its padding included, times the steps
the img2img pipeline runs on it: ``upscaler.compute.engines.usdu.plan_tiles``).

Charged at submit, before anything is stored or computed.
"""

from __future__ import annotations

import math

from upscaler.compute.dimensions import OutputPlan
from upscaler.compute.engines.flux_files import FLUX_SIDE_MULTIPLE
from upscaler.compute.engines.usdu import plan_tiles
from upscaler.compute.passes import plan_passes
from upscaler.domain.jobs import EsrganParams, FluxParams, ImagenParams, JobParams, JobWork, Size
from upscaler.settings import Settings


def flux_steps_run(steps: int, denoise: float) -> int:
    """Denoising steps img2img runs at ``denoise`` (strength): the last ``steps x denoise``
    of the schedule, rounded up; none at 0 (the tile is kept as it is)."""
    if denoise <= 0:
        return 0
    return min(steps, math.ceil(steps * min(1.0, denoise) - 1e-9))


def flux_megapixel_steps(width: int, height: int, params: FluxParams) -> tuple[float, int]:
    """FLUX's work on a ``width x height`` canvas: (megapixel-steps, tiles)."""
    tiles = plan_tiles(height, width, params.tile_size, params.tile_padding, params.tile_order,
                       params.seam_fix, params.seam_fix_width)
    up = FLUX_SIDE_MULTIPLE

    def padded(side: int) -> int:
        return -(-side // up) * up

    pixels = sum(padded(t.crop[1] - t.crop[0]) * padded(t.crop[3] - t.crop[2]) for t in tiles)
    return pixels / 1e6 * flux_steps_run(params.steps, params.denoise), len(tiles)


def job_work(settings: Settings, params: JobParams, input_size: Size, plan: OutputPlan,
             model_scale: int | None = None) -> JobWork:
    """What a job will compute. ``model_scale``: the ESRGAN model's (FLUX: its pre-pass
    model's); Imagen's factor is in its params. Raises OutputTooLarge when no pass plan keeps
    every image within the output cap."""
    output_px = plan.output_width * plan.output_height
    if isinstance(params, ImagenParams):  # Vertex makes input x factor, then it is resampled
        made = input_size.width * input_size.height * params.factor**2
        resampled = (input_size.width * params.factor, input_size.height * params.factor) != (
            plan.output_width, plan.output_height)
        return JobWork(megapixels=(made + output_px * resampled) / 1e6)
    assert isinstance(params, EsrganParams | FluxParams) and model_scale is not None
    passes = plan_passes(input_size.width, input_size.height, plan.output_width,
                         plan.output_height, model_scale, settings.max_model_passes,
                         settings.max_output_pixels)
    if isinstance(params, EsrganParams):
        return JobWork(megapixels=passes.computed_pixels / 1e6, passes=passes.passes)
    steps, tiles = flux_megapixel_steps(plan.output_width, plan.output_height, params)
    return JobWork(megapixels=passes.computed_pixels / 1e6,
                   flux_megapixel_steps=round(steps, 6), passes=passes.passes,
                   flux_tiles=tiles)
