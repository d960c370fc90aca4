"""The print-size rule: upscaler.compute.dimensions.calculate_output_dimensions and OutputPlan."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import TypeAdapter

from upscaler.compute.dimensions import CropInfo, OutputPlan, calculate_output_dimensions

PLAN = TypeAdapter(OutputPlan)

# --- the print-size rule's basic cases -------------------------------------------------------


def test_no_print_size_multiplies_by_factor():
    plan = calculate_output_dimensions(1024, 768, upscale_factor=4)
    assert (plan.output_width, plan.output_height) == (4096, 3072)
    assert plan.scale_factor == 4.0
    assert isinstance(plan.scale_factor, float)
    assert plan.crop_info is None
    assert (plan.final_width, plan.final_height) == (4096, 3072)
    assert plan.crop_applied is False
    assert plan.dpi == 150


def test_default_factor_is_four():
    plan = calculate_output_dimensions(100, 50)
    assert (plan.output_width, plan.output_height) == (400, 200)


def test_matching_aspect_gives_exact_target():
    plan = calculate_output_dimensions(1024, 768, target_dpi=300,
                                       target_width_inches=8, target_height_inches=6)
    assert (plan.output_width, plan.output_height) == (2400, 1800)
    assert (plan.final_width, plan.final_height) == (2400, 1800)
    assert plan.crop_info is None
    assert plan.crop_applied is False
    assert plan.scale_factor == pytest.approx(2400 / 1024)
    assert plan.dpi == 300


def test_aspect_within_one_percent_is_a_match():
    # 1000 x 755: aspect 1.3245 vs 1.3333 (0.66 % off) -> stretched to exactly the target
    plan = calculate_output_dimensions(1000, 755, target_dpi=300,
                                       target_width_inches=8, target_height_inches=6)
    assert (plan.output_width, plan.output_height) == (2400, 1800)
    assert plan.crop_info is None


def test_taller_input_fills_width_and_crops_vertically():
    plan = calculate_output_dimensions(768, 1024, target_dpi=300,
                                       target_width_inches=8, target_height_inches=6)
    # scale 2400 / 768 = 3.125 -> 2400 x 3200, 1400 px too tall
    assert (plan.output_width, plan.output_height) == (2400, 3200)
    assert plan.scale_factor == 3.125
    crop = plan.crop_info
    assert crop is not None
    assert crop.direction == "vertical"
    assert crop.amount_px == 1400 == plan.output_height - 1800
    assert crop.amount_inches == pytest.approx(1400 / 300)
    assert crop.box == (0, 700, 2400, 2500)
    # advised only: the output is not cut
    assert plan.crop_applied is False
    assert (plan.final_width, plan.final_height) == (2400, 3200)


def test_wider_input_fills_height_and_crops_horizontally():
    plan = calculate_output_dimensions(2000, 500, target_dpi=300,
                                       target_width_inches=8, target_height_inches=6)
    # scale 1800 / 500 = 3.6 -> 7200 x 1800, 4800 px too wide
    assert (plan.output_width, plan.output_height) == (7200, 1800)
    assert plan.scale_factor == pytest.approx(3.6)
    crop = plan.crop_info
    assert crop is not None
    assert crop.direction == "horizontal"
    assert crop.amount_px == 4800 == plan.output_width - 2400
    assert crop.amount_inches == pytest.approx(16.0)
    assert crop.box == (2400, 0, 4800, 1800)
    assert plan.crop_applied is False


# --- edge cases ------------------------------------------------------------------------------


def test_float_error_does_not_lose_a_pixel():
    plan = calculate_output_dimensions(820, 600, target_dpi=300,
                                       target_width_inches=8.2, target_height_inches=6)
    assert (plan.output_width, plan.output_height) == (2460, 1800)


@pytest.mark.parametrize("inches, dpi, expected", [(8.2, 100, 820), (4.1, 100, 410),
                                                   (2.3, 100, 230), (8.2, 300, 2460)])
def test_float_error_in_inches_times_dpi(inches, dpi, expected):
    plan = calculate_output_dimensions(expected, expected, target_dpi=dpi,
                                       target_width_inches=inches, target_height_inches=inches)
    assert (plan.output_width, plan.output_height) == (expected, expected)


def test_float_error_width_only_at_100_dpi():
    assert int(8.2 * 100) == 819  # the trap a plain int() falls into
    plan = calculate_output_dimensions(1000, 500, target_dpi=100, target_width_inches=8.2)
    assert (plan.output_width, plan.output_height) == (820, 410)


def test_float_error_width_only():
    plan = calculate_output_dimensions(1000, 500, target_dpi=300, target_width_inches=8.2)
    assert (plan.output_width, plan.output_height) == (2460, 1230)


def test_fractional_pixels_are_floored():
    plan = calculate_output_dimensions(1000, 1000, target_dpi=300,
                                       target_width_inches=3.333, target_height_inches=3.333)
    assert (plan.output_width, plan.output_height) == (999, 999)


def test_width_only_fills_width_and_keeps_aspect():
    plan = calculate_output_dimensions(1024, 768, target_dpi=300, target_width_inches=8)
    assert (plan.output_width, plan.output_height) == (2400, 1800)
    assert plan.scale_factor == pytest.approx(2400 / 1024)
    assert plan.crop_info is None
    assert (plan.final_width, plan.final_height) == (2400, 1800)


def test_height_only_fills_height_and_keeps_aspect():
    plan = calculate_output_dimensions(1000, 500, target_dpi=300, target_height_inches=6)
    assert (plan.output_width, plan.output_height) == (3600, 1800)
    assert plan.scale_factor == pytest.approx(3.6)
    assert plan.crop_info is None


def test_one_side_only_ignores_crop_to_target():
    plan = calculate_output_dimensions(1000, 500, target_dpi=100, target_width_inches=5,
                                       crop_to_target=True)
    assert (plan.final_width, plan.final_height) == (500, 250)
    assert plan.crop_applied is False


def test_crop_to_target_vertical():
    plan = calculate_output_dimensions(768, 1024, target_dpi=300, target_width_inches=8,
                                       target_height_inches=6, crop_to_target=True)
    assert (plan.output_width, plan.output_height) == (2400, 3200)
    assert (plan.final_width, plan.final_height) == (2400, 1800)
    assert plan.crop_applied is True
    assert plan.crop_info is not None
    assert plan.crop_info.box == (0, 700, 2400, 2500)


def test_crop_to_target_horizontal():
    plan = calculate_output_dimensions(2000, 500, target_dpi=300, target_width_inches=8,
                                       target_height_inches=6, crop_to_target=True)
    assert (plan.final_width, plan.final_height) == (2400, 1800)
    assert plan.crop_applied is True
    left, top, right, bottom = plan.crop_info.box
    assert (left, top, right, bottom) == (2400, 0, 4800, 1800)
    # centred: equal overhang either side
    assert left == plan.output_width - right


def test_crop_box_centred_with_odd_overhang():
    plan = calculate_output_dimensions(100, 103, target_dpi=100, target_width_inches=1,
                                       target_height_inches=1, crop_to_target=True)
    assert (plan.output_width, plan.output_height) == (100, 103)
    assert plan.crop_info.amount_px == 3
    assert plan.crop_info.box == (0, 1, 100, 101)
    assert (plan.final_width, plan.final_height) == (100, 100)


def test_crop_to_target_with_matching_aspect_is_exact_and_uncut():
    plan = calculate_output_dimensions(1024, 768, target_dpi=300, target_width_inches=8,
                                       target_height_inches=6, crop_to_target=True)
    assert (plan.output_width, plan.output_height) == (2400, 1800)
    assert (plan.final_width, plan.final_height) == (2400, 1800)
    assert plan.crop_info is None
    assert plan.crop_applied is False


def test_aspect_tolerance_is_relative_for_tall_images():
    # 1000 x 4000 (aspect 0.25) vs 3 x 12.4 in (0.2419): 0.008 apart but 3.3 % off, so this is
    # not a match; the image is wider than the print: fill the height, crop the sides.
    plan = calculate_output_dimensions(1000, 4000, target_dpi=100, target_width_inches=3,
                                       target_height_inches=12.4)
    assert (plan.output_width, plan.output_height) == (310, 1240)
    assert plan.crop_info is not None
    assert plan.crop_info.direction == "horizontal"
    assert plan.crop_info.amount_px == 10
    assert plan.crop_info.box == (5, 0, 305, 1240)


def test_aspect_tolerance_is_relative_for_wide_images():
    # 4000 x 1000 (aspect 4.0) vs 12.1 x 3 in (4.033): 0.03 apart but only 0.8 % off: a match
    plan = calculate_output_dimensions(4000, 1000, target_dpi=100, target_width_inches=12.1,
                                       target_height_inches=3)
    assert (plan.output_width, plan.output_height) == (1210, 300)
    assert plan.crop_info is None


def test_small_target_where_rounding_flips_the_aspect():
    # 22.8 x 0.59 in at 10 dpi is 228 x 5 px (aspect 45.6) while the inches say 38.6 and the
    # input is 43.25: the crop must fit the pixel target, never be negative or outside the image
    plan = calculate_output_dimensions(173, 4, target_dpi=10, target_width_inches=22.8,
                                       target_height_inches=0.59, crop_to_target=True)
    assert (plan.output_width, plan.output_height) == (228, 5)
    assert (plan.final_width, plan.final_height) == (228, 5)
    assert plan.crop_info is None


def test_small_target_with_real_overhang():
    # 100 x 10 px target (aspect 10); input 90 x 10 (aspect 9) is taller: fill the width
    plan = calculate_output_dimensions(90, 10, target_dpi=10, target_width_inches=10,
                                       target_height_inches=1, crop_to_target=True)
    assert (plan.output_width, plan.output_height) == (100, 11)
    assert plan.crop_info.direction == "vertical"
    assert plan.crop_info.amount_px == 1
    assert plan.crop_info.box == (0, 0, 100, 10)
    assert (plan.final_width, plan.final_height) == (100, 10)


def test_crop_box_always_inside_output_and_exactly_the_target():
    rng = random.Random(1234)
    for _ in range(3000):
        iw, ih = rng.randint(1, 5000), rng.randint(1, 5000)
        dpi = rng.choice([1, 2, 10, 72, 150, 300, 600])
        w_in, h_in = round(rng.uniform(0.1, 40), 2), round(rng.uniform(0.1, 40), 2)
        plan = calculate_output_dimensions(iw, ih, target_dpi=dpi, target_width_inches=w_in,
                                           target_height_inches=h_in, crop_to_target=True)
        target = (max(1, int(w_in * dpi + 1e-6)), max(1, int(h_in * dpi + 1e-6)))
        assert (plan.final_width, plan.final_height) == target, (iw, ih, dpi, w_in, h_in)
        if plan.crop_info is None:
            assert (plan.output_width, plan.output_height) == target
            continue
        left, top, right, bottom = plan.crop_info.box
        assert plan.crop_info.amount_px > 0
        assert left >= 0 and top >= 0
        assert right <= plan.output_width and bottom <= plan.output_height
        assert (right - left, bottom - top) == target
        assert abs(left - (plan.output_width - right)) <= 1  # centred
        assert abs(top - (plan.output_height - bottom)) <= 1


def test_non_integer_upscale_factor():
    plan = calculate_output_dimensions(1024, 768, upscale_factor=2.5)
    assert (plan.output_width, plan.output_height) == (2560, 1920)
    assert plan.scale_factor == 2.5
    odd = calculate_output_dimensions(1023, 767, upscale_factor=2.5)
    assert (odd.output_width, odd.output_height) == (2557, 1917)


def test_one_pixel_input():
    plan = calculate_output_dimensions(1, 1, upscale_factor=4)
    assert (plan.output_width, plan.output_height) == (4, 4)
    printed = calculate_output_dimensions(1, 1, target_dpi=300, target_width_inches=8,
                                          target_height_inches=6)
    assert (printed.output_width, printed.output_height) == (2400, 2400)
    assert printed.crop_info.direction == "vertical"
    assert printed.crop_info.amount_px == 600
    assert printed.crop_info.box == (0, 300, 2400, 2100)


@pytest.mark.parametrize("width, height", [(0, 100), (100, 0), (-5, 100), (100, -1), (0, 0)])
def test_bad_input_size_raises(width, height):
    with pytest.raises(ValueError):
        calculate_output_dimensions(width, height)
    with pytest.raises(ValueError):
        calculate_output_dimensions(width, height, target_dpi=300, target_width_inches=8,
                                    target_height_inches=6)


@pytest.mark.parametrize("dpi", [0, -300])
def test_bad_dpi_raises(dpi):
    with pytest.raises(ValueError):
        calculate_output_dimensions(100, 100, target_dpi=dpi, target_width_inches=8,
                                    target_height_inches=6)
    with pytest.raises(ValueError):
        calculate_output_dimensions(100, 100, target_dpi=dpi)


@pytest.mark.parametrize("factor", [0, -2, None])
def test_bad_upscale_factor_raises(factor):
    with pytest.raises(ValueError):
        calculate_output_dimensions(100, 100, upscale_factor=factor)


def test_upscale_factor_ignored_with_print_size():
    plan = calculate_output_dimensions(1024, 768, upscale_factor=None, target_dpi=300,
                                       target_width_inches=8, target_height_inches=6)
    assert (plan.output_width, plan.output_height) == (2400, 1800)


@pytest.mark.parametrize("w_in, h_in", [(0, 6), (8, 0), (-8, 6), (8, -6), (0, None),
                                         (None, -6)])
def test_bad_print_size_raises(w_in, h_in):
    with pytest.raises(ValueError):
        calculate_output_dimensions(100, 100, target_dpi=300, target_width_inches=w_in,
                                    target_height_inches=h_in)


# --- serialisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"upscale_factor": 4},
    {"target_dpi": 300, "target_width_inches": 8, "target_height_inches": 6},
    {"target_dpi": 300, "target_width_inches": 6, "target_height_inches": 8},
    {"target_dpi": 300, "target_width_inches": 6, "target_height_inches": 8,
     "crop_to_target": True},
    {"target_dpi": 300, "target_width_inches": 20, "target_height_inches": 4,
     "crop_to_target": True},
])
def test_plan_round_trips_through_json(kwargs):
    """As stored in a job record."""
    plan = calculate_output_dimensions(1024, 768, **kwargs)
    through_json = PLAN.validate_json(PLAN.dump_json(plan))
    assert through_json == plan
    if plan.crop_info is not None:
        assert isinstance(through_json.crop_info, CropInfo)
        assert isinstance(through_json.crop_info.box, tuple)


def test_stored_shape():
    plan = calculate_output_dimensions(768, 1024, target_dpi=300, target_width_inches=8,
                                       target_height_inches=6, crop_to_target=True)
    data = json.loads(PLAN.dump_json(plan))
    assert data["crop_info"] == {"direction": "vertical", "amount_px": 1400,
                                 "amount_inches": pytest.approx(1400 / 300),
                                 "box": [0, 700, 2400, 2500]}
    assert data["final_width"] == 2400
    assert data["final_height"] == 1800
    assert data["crop_applied"] is True
    assert data["dpi"] == 300


# --- a target in pixels (target_width / target_height) ----------------------------------------

def test_pixel_target_fills_and_advises_the_crop():
    """A client asking 2000x1000 px of a 3:2 photo: fill the width, overhang the
    height, the centred crop advised (or applied)."""
    plan = calculate_output_dimensions(1200, 800, target_width_px=2000, target_height_px=1000)
    assert (plan.output_width, plan.output_height) == (2000, 1333)
    assert plan.crop_info == CropInfo("vertical", 333, 333 / 150, (0, 166, 2000, 1166))
    assert not plan.crop_applied and plan.applied_crop_box is None
    cut = calculate_output_dimensions(1200, 800, target_width_px=2000, target_height_px=1000,
                                      crop_to_target=True, target_dpi=300)
    assert (cut.final_width, cut.final_height, cut.dpi) == (2000, 1000, 300)
    assert cut.applied_crop_box == (0, 166, 2000, 1166)


def test_pixel_target_of_one_side_keeps_the_aspect_ratio():
    plan = calculate_output_dimensions(300, 200, target_width_px=1000)
    assert (plan.output_width, plan.output_height) == (1000, 666) and plan.crop_info is None
    plan = calculate_output_dimensions(300, 200, target_height_px=500)
    assert (plan.output_width, plan.output_height) == (750, 500)


@pytest.mark.parametrize("w,h", [(640, 427), (173, 4), (97, 131), (1000, 1000), (31, 2000)])
@pytest.mark.parametrize("tw,th,dpi", [(8, 10, 100), (24, 16, 50), (3, 3, 7), (11, 4, 30)])
@pytest.mark.parametrize("crop", [False, True])
def test_pixel_target_is_the_print_size_rule(w, h, tw, th, dpi, crop):
    """A print size of W x H inches at D dpi and a pixel target of W*D x H*D are one rule."""
    by_inches = calculate_output_dimensions(w, h, None, dpi, tw, th, crop)
    by_pixels = calculate_output_dimensions(w, h, None, dpi, None, None, crop, tw * dpi,
                                            th * dpi)
    assert by_pixels == by_inches


@pytest.mark.parametrize("kwargs", [
    {"target_width_px": 100, "target_width_inches": 2},
    {"target_height_px": 100, "target_width_inches": 2},
    {"target_width_px": 100, "target_height_px": 50, "target_height_inches": 1},
])
def test_pixels_and_inches_together_are_refused(kwargs):
    with pytest.raises(ValueError, match="either in pixels .* not both"):
        calculate_output_dimensions(100, 100, **kwargs)


@pytest.mark.parametrize("bad", [0, -5])
def test_pixel_target_must_be_positive(bad):
    with pytest.raises(ValueError, match="positive number of pixels"):
        calculate_output_dimensions(100, 100, target_width_px=bad)


def test_a_vanishing_side_is_planned_not_divided_by():
    """A side of 5e-324 inches (the schema allows it): the print's aspect ratio underflowed
    to 0 and the comparison divided by it (a 500)."""
    plan = calculate_output_dimensions(8, 6, target_width_inches=5e-324,
                                       target_height_inches=1e3, target_dpi=1)
    assert plan.output_height == 1000 and plan.output_width >= 1
