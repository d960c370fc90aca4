"""The print-size rule: how big the output is. Every engine sizes its output through here.
Rule: docs/design/engines.md ("Sizing") and the README's "The print-size rule".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

ASPECT_TOLERANCE = 0.01
BleedUnit = Literal["in", "mm"]
# A bleed's unit: how many of it make an inch (the keys are BleedUnit's values).
BLEED_UNITS: dict[str, float] = {"in": 1.0, "mm": 25.4}


class PlanError(ValueError):
    """A request the rule cannot plan; ``code`` is the API's error code for it (None: the
    plain invalid_request)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def bleed_inches(amount: float, unit: str) -> float:
    """A bleed (``bleed`` in ``bleed_unit``) in inches; refuses what is no bleed."""
    if unit not in BLEED_UNITS:
        raise PlanError(f"bleed_unit must be one of {', '.join(BLEED_UNITS)} (got {unit!r})")
    # ``not x >= 0`` also refuses NaN.
    if not (amount >= 0 and math.isfinite(amount)):
        raise PlanError("bleed must be a finite number >= 0")
    return amount / BLEED_UNITS[unit]


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
    # The bleed: its nominal width a side in output pixels (bleed x dpi; the trim box says the
    # whole pixels of each side), and the print without it, (left, top, right, bottom) in
    # output pixels like the crop box. 0.0 and None without a bleed (stored plans load).
    bleed_px: float = 0.0
    trim_box: tuple[int, int, int, int] | None = None

    @property
    def applied_crop_box(self) -> tuple[int, int, int, int] | None:
        """The box to cut the output to: the crop when it is applied, else None."""
        return self.crop_info.box if self.crop_applied and self.crop_info else None

    @property
    def final_trim_box(self) -> tuple[int, int, int, int] | None:
        """The trim box in the delivered file's pixels (the output after an applied crop)."""
        if self.trim_box is None:
            return None
        dx, dy = self.applied_crop_box[:2] if self.applied_crop_box else (0, 0)
        left, top, right, bottom = self.trim_box
        return left - dx, top - dy, right - dx, bottom - dy


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
    bleed: float = 0.0,
    bleed_unit: str = "in",
) -> OutputPlan:
    """Plan the output size. Raises ValueError on impossible input (callers map it to 4xx;
    a ``PlanError`` names its code).

    The target is a print size in inches at ``target_dpi``, or a size in pixels
    (``target_width_px``/``target_height_px``: the API's ``target_width``/``target_height``);
    both go through the same rule. Giving both kinds is refused. A ``bleed`` (in
    ``bleed_unit``, at ``target_dpi``) goes around the target on every side: the image fills
    the print plus its bleed, and ``trim_box`` is the print inside it.
    """
    if input_width < 1 or input_height < 1:
        raise ValueError("input image has zero width or height")
    if not target_dpi > 0:
        raise ValueError("target_dpi must be positive")
    bleed_pxf = bleed_inches(bleed, bleed_unit) * target_dpi
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
    if bleed_pxf and target_wf is None and target_hf is None:
        # A factor gives no print: the bleed would either change the factor's size or eat
        # into the picture, and neither is what was asked.
        raise PlanError("a bleed goes around a print: give a print size (target_width_inches/"
                        "target_height_inches) or a pixel target (target_width/target_height) "
                        "with it, not only upscale_factor", code="bleed_needs_print_size")
    # The image fills the print plus its bleed on every side: the box the rule below fills.
    full_wf = target_wf + 2 * bleed_pxf if bleed_pxf and target_wf is not None else target_wf
    full_hf = target_hf + 2 * bleed_pxf if bleed_pxf and target_hf is not None else target_hf

    def derived_side(side_f: float) -> float:
        """The print's side the image's aspect gives (one side given): the image's less the
        bleed on both ends."""
        if bleed_pxf and side_f - 2 * bleed_pxf < 1 - 1e-6:
            raise PlanError(f"a bleed of {bleed_pxf:g} px a side leaves no print on a side of "
                            f"{side_f:.0f} px: give a smaller bleed or a larger size",
                            code="bleed_too_large")
        return side_f - 2 * bleed_pxf

    def trimmed(plan: OutputPlan, trim_wf: float, trim_hf: float) -> OutputPlan:
        """The plan with its bleed: the print, centred in the box filled (the crop box, else
        the whole output)."""
        if not bleed_pxf:
            return plan
        box = plan.crop_info.box if plan.crop_info else (0, 0, plan.output_width,
                                                         plan.output_height)
        trim_w = min(_px(trim_wf), box[2] - box[0])  # (a print under a pixel is one)
        trim_h = min(_px(trim_hf), box[3] - box[1])
        left = box[0] + (box[2] - box[0] - trim_w) // 2
        top = box[1] + (box[3] - box[1] - trim_h) // 2
        return replace(plan, bleed_px=bleed_pxf,
                       trim_box=(left, top, left + trim_w, top + trim_h))

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

    # One side only: the image with its bleed fills it and keeps its aspect ratio; the print
    # is the image less the bleed on every side (its width, or height, exactly the one given).
    if full_hf is None:  # width only
        scale = full_wf / input_width
        height_f = input_height * scale
        return trimmed(plan(_px(full_wf), _px(height_f), scale), target_wf,
                       derived_side(height_f))
    if full_wf is None:  # height only
        scale = full_hf / input_height
        width_f = input_width * scale
        return trimmed(plan(_px(width_f), _px(full_hf), scale), derived_side(width_f),
                       target_hf)

    target_w, target_h = _px(full_wf), _px(full_hf)

    # "within 1 %" is relative: an absolute 0.01 is 4 % on a 1:4 print and 0.25 % on a 4:1 one.
    # The ratio of the aspects, multiplied out: a tiny side (1e-300 inches) divides by no zero.
    # With a bleed the image fills the print and its bleed: that box's aspect is compared.
    if abs(input_width * full_hf - input_height * full_wf) < (
            ASPECT_TOLERANCE * input_height * full_wf):
        return trimmed(plan(target_w, target_h, target_w / input_width), target_wf, target_hf)

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
        return trimmed(plan(out_w, out_h, scale), target_wf, target_hf)
    return trimmed(plan(out_w, out_h, scale, crop), target_wf, target_hf)
