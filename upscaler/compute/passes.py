"""The pass plan: which images an ESRGAN-family model makes for one job, decided once, each pass
within the output cap; the engine runs it, the Ingress charges it. Torch-free.
Design: docs/design/engines.md
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from upscaler.errors import OutputTooLarge

Dims = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class PassPlan:
    model_scale: int
    input_size: Dims  # the decoded upload
    pass_input: Dims  # what the first pass reads: the input, or shrunk to fit the cap
    passes: int
    output_size: Dims  # the planned output, uncropped

    @property
    def shrinks_input(self) -> bool:
        return self.passes > 0 and self.pass_input != self.input_size

    @property
    def pass_sizes(self) -> list[Dims]:
        """The image each model pass makes, in order."""
        w, h = self.pass_input
        s = max(1, self.model_scale)
        return [(w * s**k, h * s**k) for k in range(1, self.passes + 1)]

    @property
    def resampled(self) -> bool:
        """The output is resampled (not the last pass's own image)."""
        sizes = self.pass_sizes
        return not sizes or sizes[-1] != self.output_size

    @property
    def computed_pixels(self) -> int:
        """Pixels made: every pass's image and, when resampled, the output (uncropped)."""
        made = sum(w * h for w, h in self.pass_sizes)
        if self.resampled:
            made += self.output_size[0] * self.output_size[1]
        return made

    @property
    def largest_pass_pixels(self) -> int:
        return max((w * h for w, h in self.pass_sizes), default=0)


def _fit(width: int, height: int, scale: int, max_pixels: int) -> Dims:
    """The input shrunk (aspect kept, floored) so one pass at ``scale`` makes at most
    ``max_pixels``."""
    budget = max_pixels // (scale * scale)  # input pixels one pass may read
    if budget < 1:
        raise OutputTooLarge(f"a x{scale} model pass makes {scale * scale} pixels from each "
                             f"input pixel, more than the {max_pixels:,}-pixel output cap "
                             "allows; use a model of smaller scale")
    f = math.sqrt(budget / (width * height))
    h = min(height, max(1, math.floor(height * f)))
    w = min(width, max(1, math.floor(width * f)), max(1, budget // h))
    return w, h


def plan_passes(width: int, height: int, out_width: int, out_height: int, model_scale: int,
                max_passes: int, max_pixels: int) -> PassPlan:
    """How the model gets from ``width x height`` to ``out_width x out_height``.

    At least one pass when enlarging; another only while the factor still missing is at
    least sqrt(model scale) (a smaller rest is resampled) and its image stays within
    ``max_pixels``. Shrinking (factor <= 1) runs no pass. A 1x (restoration) model runs one.
    The first pass's input is shrunk when that pass alone would pass ``max_pixels``.
    """
    scale = max(1, int(model_scale))
    output = (out_width, out_height)
    needed = max(out_width / width, out_height / height)
    if scale > 1 and needed <= 1.0 + 1e-9:
        return PassPlan(scale, (width, height), (width, height), 0, output)
    if width * height * scale * scale > max_pixels:
        w, h = _fit(width, height, scale, max_pixels)
        return PassPlan(scale, (width, height), (w, h), 1, output)
    passes, reached = 1, float(scale)
    if scale > 1:
        while passes < max_passes:
            nxt = reached * scale
            if (needed / reached < math.sqrt(scale) - 1e-9
                    or width * height * nxt * nxt > max_pixels):
                break
            passes, reached = passes + 1, nxt
    return PassPlan(scale, (width, height), (width, height), passes, output)
