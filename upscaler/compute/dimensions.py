"""The print-size rule: how big the output is. Every engine sizes its output through here.
Rule: docs/design/engines.md ("Sizing") and the README's "The print-size rule".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ASPECT_TOLERANCE = 0.01


def _px(value: float) -> int:
    # floor, tolerant of binary float error (8.2 * 100 = 819.9999999999999)
    return max(1, math.floor(value + 1e-6))


@dataclass(frozen=True)
class CropInfo:
    direction: Literal["vertical", "horizontal"]
    amount_px: int
    amount_inches: float
    # Centred crop box in output pixels: (left, top, right, bottom).
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class OutputPlan:
    output_width: int
    output_height: int
    scale_factor: float
    crop_info: CropInfo | None
    # Size after an applied crop (== output size when no crop is applied).
    final_width: int
    final_height: int
    crop_applied: bool
    dpi: int

    @property
    def applied_crop_box(self) -> tuple[int, int, int, int] | None:
        """The box to cut the output to: the crop when it is applied, else None."""
        return self.crop_info.box if self.crop_applied and self.crop_info else None


def calculate_output_dimensions(
    input_width: int,
    input_height: int,
    upscale_factor: float | None = 4,
    target_dpi: int = 150,
    target_width_inches: float | None = None,
    target_height_inches: float | None = None,
    crop_to_target: bool = False,
    target_width_px: int | None = None,
    target_height_px: int | None = None,
) -> OutputPlan:
    """Plan the output size. Raises ValueError on impossible input (callers map it to 4xx).

    The target is a print size in inches at ``target_dpi``, or a size in pixels
    (``target_width_px``/``target_height_px``: the API's ``target_width``/``target_height``);
    both go through the same rule. Giving both kinds is refused.
    """
    if input_width < 1 or input_height < 1:
        raise ValueError("input image has zero width or height")
    if not target_dpi > 0:
        raise ValueError("target_dpi must be positive")
    for name, inches in (("target_width_inches", target_width_inches),
                         ("target_height_inches", target_height_inches)):
        # ``not x > 0`` also refuses NaN; without this a zero side divided by zero and a
        # negative one was silently turned into a 1 px output.
        if inches is not None and not (inches > 0 and math.isfinite(inches)):
            raise ValueError(f"{name} must be a positive number of inches")
    for name, px in (("target_width", target_width_px), ("target_height", target_height_px)):
        if px is not None and not px >= 1:
            raise ValueError(f"{name} must be a positive number of pixels")
    by_inches = target_width_inches is not None or target_height_inches is not None
    by_pixels = target_width_px is not None or target_height_px is not None
    if by_inches and by_pixels:
        raise ValueError("give the target either in pixels (target_width/target_height) or as "
                         "a print size in inches (target_width_inches/target_height_inches), "
                         "not both: the two can disagree")

    # The target in (fractional) pixels: a print size is inches x dpi.
    target_wf = (target_width_inches * target_dpi if target_width_inches is not None
                 else target_width_px)
    target_hf = (target_height_inches * target_dpi if target_height_inches is not None
                 else target_height_px)

    def plan(w: int, h: int, scale: float, crop: CropInfo | None = None) -> OutputPlan:
        if crop is not None and crop_to_target:
            left, top, right, bottom = crop.box
            return OutputPlan(w, h, scale, crop, right - left, bottom - top, True, target_dpi)
        return OutputPlan(w, h, scale, crop, w, h, False, target_dpi)

    if target_wf is None and target_hf is None:
        if upscale_factor is None or not (upscale_factor > 0 and math.isfinite(upscale_factor)):
            raise ValueError("upscale_factor must be positive")
        return plan(_px(input_width * upscale_factor), _px(input_height * upscale_factor),
                    float(upscale_factor))

    if target_hf is None:  # width only: fill it, keep the aspect ratio
        scale = target_wf / input_width
        return plan(_px(target_wf), _px(input_height * scale), scale)
    if target_wf is None:  # height only
        scale = target_hf / input_height
        return plan(_px(input_width * scale), _px(target_hf), scale)

    target_w, target_h = _px(target_wf), _px(target_hf)

    # "within 1 %" is relative: an absolute 0.01 is 4 % on a 1:4 print and 0.25 % on a 4:1 one.
    # The ratio of the aspects, multiplied out: a tiny side (1e-300 inches) divides by no zero.
    if abs(input_width * target_hf - input_height * target_wf) < (
            ASPECT_TOLERANCE * input_height * target_wf):
        return plan(target_w, target_h, target_w / input_width)

    # Which side overhangs is decided on the whole-pixel target, the box the crop must fit:
    # on small targets flooring can move its aspect past the input's (173x4 px to 22.8x0.59 in
    # at 10 dpi: 228x5 px), and deciding on inches then gave a negative crop outside the image.
    if input_width * target_h < target_w * input_height:
        # Input is taller than the target: fill the width, the height overhangs.
        scale = target_w / input_width
        out_w, out_h = target_w, max(target_h, _px(input_height * scale))
        amount = out_h - target_h
        top = amount // 2
        crop = CropInfo("vertical", amount, amount / target_dpi, (0, top, out_w, top + target_h))
    else:
        # Input is wider: fill the height, the width overhangs.
        scale = target_h / input_height
        out_w, out_h = max(target_w, _px(input_width * scale)), target_h
        amount = out_w - target_w
        left = amount // 2
        box = (left, 0, left + target_w, out_h)
        crop = CropInfo("horizontal", amount, amount / target_dpi, box)
    if amount == 0:  # nothing overhangs after rounding: the output is exactly the target
        return plan(out_w, out_h, scale)
    return plan(out_w, out_h, scale, crop)
