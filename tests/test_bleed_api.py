"""The bleed through the HTTP API (the whole graph in this process) and the client's CLI
parsing: the answers' fields (the plan, the upscale answer, the status), the file's size and
DPI on every engine, and the 4xx of a bleed that cannot be."""

from __future__ import annotations

import pytest
from helpers.api import download, upload, wait_for_job
from helpers.images import photo, png_bytes

from upscaler_client.cli import bleed_text, build_parser, upscale_options
from upscaler_client.models import Job
from upscaler_client.options import form_fields

PHOTO = png_bytes(photo("coffee", (48, 32)))
# 48x32 px to a 2x1.1667 in print at 48 dpi with 0.25 in bleed: 96x56 px of print, 12 px a
# side: 120x80 px (the photo's 3:2), the print at (12, 12, 108, 68).
PRINT = {"target_width_inches": 2, "target_height_inches": 7 / 6, "target_dpi": 48,
         "bleed": 0.25}


def test_the_plan_says_the_bleed_and_the_trim(bare_app):
    q = {"width": 1200, "height": 800, "target_width_inches": 24, "target_height_inches": 16,
         "target_dpi": 200, "bleed": 0.125}
    r = bare_app.get("/api/plan", params=q)
    plan = r.json()
    assert plan["finalSize"] == plan["outputSize"] == {"width": 4850, "height": 3250}, r.text
    assert plan["printInches"] == [24.25, 16.25] and plan["trimInches"] == [24, 16]
    assert plan["bleed"] == {"amount": 0.125, "unit": "in", "px": 25.0,
                             "trimBox": [25, 25, 4825, 3225]}
    mm = bare_app.get("/api/plan", params={**q, "bleed": 3, "bleed_unit": "MM"}).json()
    assert mm["bleed"]["unit"] == "mm" and mm["finalSize"] == {"width": 4847, "height": 3247}
    none = bare_app.get("/api/plan", params={**q, "bleed": 0}).json()
    assert none["bleed"] is None and none["trimInches"] is None
    assert none["finalSize"] == {"width": 4800, "height": 3200}
    # The key is charged, and the estimate made, for the pixels with the bleed.
    assert plan["computedMegapixels"] > none["computedMegapixels"]


@pytest.mark.parametrize("params,code", [
    ({"bleed": -1}, "invalid_request"), ({"bleed": "nan"}, "invalid_request"),
    ({"bleed": "inf"}, "invalid_request"), ({"bleed_unit": "pt"}, "invalid_request"),
    ({"target_width_inches": None, "target_height_inches": None}, "bleed_needs_print_size"),
    ({"bleed": 2, "target_width_inches": 14, "target_height_inches": 14}, "output_too_large"),
    ({"target_height_inches": None, "width": 1000, "height": 100, "bleed": 2},
     "bleed_too_large"),
])
def test_a_bleed_that_cannot_be_is_refused(bare_app, params, code):
    q = {"width": 1000, "height": 1000, "target_width_inches": 10, "target_height_inches": 10,
         "target_dpi": 300, "bleed": 0.125, **params}
    q = {k: v for k, v in q.items() if v is not None}
    r = bare_app.get("/api/plan", params=q)
    assert r.status_code == 422 and r.json()["error"] == code, r.text
    if code == "bleed_needs_print_size":
        assert "bleed goes around a print" in r.json()["message"]


def test_an_upload_with_a_bleed_says_it_everywhere(app):
    r = upload(app, PHOTO, model="tiny-rrdb", output_format="tiff", **PRINT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputSize"] == {"width": 120, "height": 80}
    assert body["bleed"] == {"amount": 0.25, "unit": "in", "px": 12.0,
                             "trimBox": [12, 12, 108, 68]}
    status = app.get(body["statusUrl"]).json()
    assert status["bleed_px"] == 12.0 and status["trim_box"] == [12, 12, 108, 68]
    out = download(app, body["outputUrl"])
    assert out.size == (120, 80) and round(out.info["dpi"][0]) == 48
    assert Job.from_api(body).trim_box() == Job.from_api(status).trim_box() == (12, 12, 108, 68)
    # No bleed: the answers as before.
    plain = upload(app, PHOTO, model="tiny-rrdb", upscale_factor=2).json()
    assert plain["bleed"] is None and app.get(plain["statusUrl"]).json()["trim_box"] is None


def test_a_factor_alone_with_a_bleed_is_refused_at_upload(app):
    r = upload(app, PHOTO, model="tiny-rrdb", upscale_factor=2, bleed=3, bleed_unit="mm")
    assert r.status_code == 422 and r.json()["error"] == "bleed_needs_print_size", r.text


@pytest.mark.parametrize("engine,extra", [
    ("flux", {"upscale_model": "tiny-rrdb", "tile_size": 64, "steps": 1, "mask_blur": 4,
              "tile_padding": 8}),
    ("imagen", {}),
])
def test_every_engine_makes_the_print_and_its_bleed(app, vertex, engine, extra):
    """A pixel target with a cropped overhang: the crop covers the print and its bleed."""
    vertex.reset()
    r = upload(app, PHOTO, engine=engine, target_width=96, target_height=48, target_dpi=48,
               bleed=0.25, crop_to_target="true", **extra)
    assert r.status_code in (200, 202), r.text
    status = wait_for_job(app, r.json()["jobId"])
    assert status["status"] == "completed", status
    assert status["output_size"] == {"width": 120, "height": 72}
    assert status["trim_box"] == [12, 12, 108, 60]
    assert download(app, status["output_url"]).size == (120, 72)


@pytest.mark.parametrize("flag,fields", [
    ("3mm", {"bleed": "3.0", "bleed_unit": "mm"}),
    ("0.125in", {"bleed": "0.125", "bleed_unit": "in"}),
    ("0.125", {"bleed": "0.125", "bleed_unit": "in"}),
    ("0.3cm", {"bleed": "3.0", "bleed_unit": "mm"}),
])
def test_cli_bleed_flag(flag, fields):
    args = build_parser().parse_args(["upscale", "a.png", "--print", "24x16in", "--bleed", flag])
    sent = form_fields(upscale_options(args))
    assert {k: sent[k] for k in fields} == fields


def test_client_options_bleed():
    """A unit written with the bleed wins, in any order; without one, bleed_unit applies."""
    assert form_fields({"bleed_unit": "in", "bleed": "3mm"}) == {"bleed": "3.0",
                                                                 "bleed_unit": "mm"}
    assert form_fields({"bleed_unit": "mm", "bleed": "3"}) == {"bleed_unit": "mm",
                                                               "bleed": "3.0"}
    assert form_fields({"bleed": 0.125}) == {"bleed": "0.125"}


@pytest.mark.parametrize("flag", ["-3mm", "3pt", "mm"])
def test_cli_refuses_a_bleed_it_cannot_read(flag, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["upscale", "a.png", f"--bleed={flag}"])
    assert info.value.code == 2 and "write a length with its unit" in capsys.readouterr().err


def test_cli_human_line_says_the_bleed():
    job = Job.from_api({"task_id": "j1", "status": "completed", "bleed_px": 35.433,
                        "trim_box": [35, 35, 7235, 4835]})
    assert bleed_text((3.0, "mm"), job) == ", bleed 3 mm a side, trim 7200x4800 px at (35,35)"
    assert bleed_text(None, job) == "" and bleed_text((3.0, "mm"), Job("j2", "completed")) == ""
