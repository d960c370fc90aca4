"""The bleed as the camelCase answers say it (the upscale answer, ``/api/plan``): the request's
amount and unit, its width in pixels, and where the print is inside the file. The status
answer says the same in its own snake_case fields (``bleed_px``, ``trim_box``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from upscaler.compute.dimensions import BleedUnit, OutputPlan


def lower_unit(value: Any) -> Any:
    """`MM`, ` in ` -> `mm`, `in` (the form's bleed_unit, before it is checked)."""
    return value.strip().lower() if isinstance(value, str) else value


class BleedInfo(BaseModel):
    amount: float = Field(description="The bleed asked for, a side, in `unit`.")
    unit: BleedUnit
    px: float = Field(description="The bleed a side in output pixels (amount x dpi, not "
                      "rounded; trimBox gives each side's whole pixels).")
    trimBox: tuple[int, int, int, int] = Field(
        description="The print without its bleed (left, top, right, bottom) in the pixels of "
        "the file (finalSize): cut here. The rest of the file is the bleed (and, with an "
        "advised crop, the overhang).")


def bleed_info(plan: OutputPlan, amount: float, unit: BleedUnit) -> BleedInfo | None:
    """The plan's bleed, or None when it has none."""
    box = plan.final_trim_box
    if box is None:
        return None
    return BleedInfo(amount=amount, unit=unit, px=round(plan.bleed_px, 3), trimBox=box)
