"""The bleed in the print-size rule (upscaler.compute.dimensions): the output covers the print
plus the bleed on every side at the DPI, the trim box is the print inside it, and no bleed
plans exactly as before."""

from __future__ import annotations

import math
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from upscaler.compute.dimensions import (
    BLEED_UNITS,
    BleedUnit,
    OutputPlan,
    PlanError,
    _px,
    calculate_output_dimensions,
)

PLAN = TypeAdapter(OutputPlan)


def test_a_24x16_print_with_an_eighth_inch_bleed():
    """The classic: 24x16 in + 0.125 in a side at 300 dpi is 24.25x16.25 in = 7275x4875 px."""
    plan = calculate_output_dimensions(6000, 4000, None, 300, 24, 16, bleed=0.125)
    assert (plan.output_width, plan.output_height) == (7275, 4875)
    assert (plan.final_width, plan.final_height) == (7275, 4875)
    assert plan.bleed_px == 37.5 and plan.crop_info is None
    # The print is exactly 7200x4800 px, centred (the odd pixel of 75 on the far side).
    assert plan.trim_box == plan.final_trim_box == (37, 37, 7237, 4837)


def test_millimetres_are_millimetres():
    plan = calculate_output_dimensions(6000, 4000, None, 300, 24, 16, bleed=3, bleed_unit="mm")
    assert plan.bleed_px == pytest.approx(3 / 25.4 * 300)
    assert (plan.output_width, plan.output_height) == (7270, 4870)  # floor(24 in + 6 mm)
    assert plan.trim_box == (35, 35, 7235, 4835)


def test_a_pixel_target_takes_its_bleed_at_the_dpi():
    plan = calculate_output_dimensions(3000, 2000, target_dpi=200, target_width_px=2000,
                                       target_height_px=1333, bleed=0.1)
    assert (plan.output_width, plan.output_height) == (2040, 1373)
    assert plan.trim_box == (20, 20, 2020, 1353)


@pytest.mark.parametrize("side", ["width", "height"])
def test_one_side_gives_the_print_that_side_and_the_image_its_aspect(side):
    # 300x200 px to a 10 in wide (or 5 in tall) print at 100 dpi with 0.5 in bleed: the image
    # with its bleed is 1100 wide (600 tall), the print 1000 wide (500 tall), the other side
    # of the print what the image's aspect leaves inside the bleed.
    if side == "width":
        plan = calculate_output_dimensions(300, 200, None, 100, 10, bleed=0.5)
        assert (plan.output_width, plan.output_height) == (1100, 733)
        assert plan.trim_box == (50, 50, 1050, 683)
    else:
        plan = calculate_output_dimensions(300, 200, None, 100, None, 5, bleed=0.5)
        assert (plan.output_width, plan.output_height) == (900, 600)
        assert plan.trim_box == (50, 50, 850, 550)


def test_crop_covers_trim_and_bleed_and_the_overhang_is_still_advised():
    # A square photo to 8x6 in at 100 dpi with 0.5 in bleed: the box filled is 900x700, the
    # square image 900x900 overhangs 200 px vertically.
    advised = calculate_output_dimensions(1000, 1000, None, 100, 8, 6, bleed=0.5)
    assert (advised.output_width, advised.output_height) == (900, 900)
    assert advised.crop_info.box == (0, 100, 900, 800) and advised.crop_info.amount_px == 200
    assert advised.trim_box == advised.final_trim_box == (50, 150, 850, 750)
    cut = calculate_output_dimensions(1000, 1000, None, 100, 8, 6, True, bleed=0.5)
    assert (cut.final_width, cut.final_height) == (900, 700)
    assert cut.applied_crop_box == (0, 100, 900, 800)
    assert cut.trim_box == (50, 150, 850, 750)  # in the engine's output
    assert cut.final_trim_box == (50, 50, 850, 650)  # in the file


def test_the_aspect_compared_is_the_print_with_its_bleed():
    # 3:2 against 4x6 in (3:2 exactly) + 0.25 in: 4.5x6.5 is 4 % off, so the overhang is advised.
    plan = calculate_output_dimensions(600, 400, None, 100, 6, 4, bleed=0.25)
    assert plan.crop_info is not None and plan.crop_info.direction == "horizontal"
    # ...and against 24x16 in + 0.125 in (0.5 % off): exactly the box, no crop.
    plan = calculate_output_dimensions(600, 400, None, 100, 24, 16, bleed=0.125)
    assert plan.crop_info is None and (plan.output_width, plan.output_height) == (2425, 1625)


def test_the_units_are_one_list():
    assert set(get_args(BleedUnit)) == set(BLEED_UNITS)


def test_a_factor_alone_has_no_print_to_bleed():
    with pytest.raises(PlanError, match="bleed goes around a print") as info:
        calculate_output_dimensions(100, 100, upscale_factor=4, bleed=3, bleed_unit="mm")
    assert info.value.code == "bleed_needs_print_size"
    assert calculate_output_dimensions(100, 100, 4, bleed=0) == calculate_output_dimensions(
        100, 100, 4)


@pytest.mark.parametrize("bleed,unit", [(-0.1, "in"), (math.nan, "in"), (math.inf, "mm"),
                                        (1, "cm"), (1, "pt")])
def test_bad_bleeds_are_refused(bleed, unit):
    with pytest.raises(ValueError, match="bleed"):
        calculate_output_dimensions(100, 100, None, 100, 4, 4, bleed=bleed, bleed_unit=unit)


def test_a_bleed_that_leaves_no_print_is_refused():
    # 10 in wide of a 10:1 strip: 1 in tall, less 2 x 0.5 in of bleed leaves nothing.
    with pytest.raises(PlanError) as info:
        calculate_output_dimensions(1000, 100, None, 100, 9, bleed=0.5)
    assert info.value.code == "bleed_too_large"


def test_stored_plans_without_a_bleed_still_load():
    """Records stored before the bleed: the new fields take their defaults."""
    plan = calculate_output_dimensions(1024, 768, None, 300, 8, 6)
    stored = PLAN.dump_python(plan)
    del stored["bleed_px"], stored["trim_box"]
    assert PLAN.validate_python(stored) == plan
    bled = calculate_output_dimensions(1024, 768, None, 300, 8, 6, True, bleed=0.2)
    assert PLAN.validate_json(PLAN.dump_json(bled)) == bled


# --- properties ------------------------------------------------------------------------------

sizes = st.integers(1, 5000)
inches = st.floats(0.5, 60, allow_nan=False)
bleeds = st.floats(0.001, 0.5, allow_nan=False)
dpis = st.integers(10, 600)


@settings(max_examples=300, deadline=None)
@given(sizes, sizes, inches, inches, bleeds, st.sampled_from(["in", "mm"]), dpis,
       st.booleans())
def test_output_is_print_plus_bleed_with_the_print_centred(w, h, tw, th, bleed, unit, dpi, crop):
    plan = calculate_output_dimensions(w, h, None, dpi, tw, th, crop, bleed=bleed,
                                       bleed_unit=unit)
    bleed_in = bleed / (25.4 if unit == "mm" else 1)
    full_w, full_h = _px((tw + 2 * bleed_in) * dpi), _px((th + 2 * bleed_in) * dpi)
    # The box filled (the crop box, else the output) is the print plus its bleed at the dpi.
    box = plan.crop_info.box if plan.crop_info else (0, 0, plan.output_width,
                                                     plan.output_height)
    assert (box[2] - box[0], box[3] - box[1]) == (full_w, full_h)
    if crop or plan.crop_info is None:
        assert (plan.final_width, plan.final_height) == (full_w, full_h)
    # The trim box: exactly the print in whole pixels, centred in that box (the odd pixel on
    # the right or bottom), inside the output.
    left, top, right, bottom = plan.trim_box
    assert (right - left, bottom - top) == (_px(tw * dpi), _px(th * dpi))
    assert 0 <= (box[2] - right) - (left - box[0]) <= 1
    assert 0 <= (box[3] - bottom) - (top - box[1]) <= 1
    fl, ft, fr, fb = plan.final_trim_box
    assert min(fl, ft) >= 0 and fr <= plan.final_width and fb <= plan.final_height
    assert plan.bleed_px == pytest.approx(bleed_in * dpi)


@settings(max_examples=300, deadline=None)
@given(sizes, sizes, st.one_of(st.none(), inches), st.one_of(st.none(), inches), dpis,
       st.booleans(), st.one_of(st.none(), st.floats(0.1, 16)))
def test_no_bleed_plans_exactly_as_before(w, h, tw, th, dpi, crop, factor):
    before = calculate_output_dimensions(w, h, factor or 4, dpi, tw, th, crop)
    assert calculate_output_dimensions(w, h, factor or 4, dpi, tw, th, crop, bleed=0,
                                       bleed_unit="mm") == before
    assert before.trim_box is None and before.bleed_px == 0.0


@settings(max_examples=200, deadline=None)
@given(sizes, sizes, st.integers(1, 20000), bleeds, dpis, st.booleans())
def test_one_side_keeps_that_side_exact(w, h, target, bleed, dpi, by_width):
    kwargs = {"target_width_px" if by_width else "target_height_px": target}
    try:
        plan = calculate_output_dimensions(w, h, None, dpi, bleed=bleed, **kwargs)
    except PlanError as exc:  # the image's aspect leaves no print on the other side
        assert exc.code == "bleed_too_large"
        return
    left, top, right, bottom = plan.trim_box
    assert (right - left if by_width else bottom - top) == target
    assert plan.crop_info is None and min(left, top) >= 0
    assert right <= plan.output_width and bottom <= plan.output_height
    # The bleed is the same on every side, to the pixel.
    sides = (left, top, plan.output_width - right, plan.output_height - bottom)
    assert max(sides) - min(sides) <= 1
