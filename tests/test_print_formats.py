"""Formats print labs take (issue 23): JPEG (quality, 4:4:4, JFIF DPI, ICC, 8-bit, alpha over
white, refused past 65,535 px a side), TIFF compression per request and from the server's
setting, and output_profile=srgb converted as littleCMS says."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from helpers.api import upload
from helpers.images import photo, png_bytes
from helpers.print_files import wide_gamut_icc
from PIL import Image, ImageCms, JpegImagePlugin

from upscaler.compute.colour import srgb_icc
from upscaler.compute.encode import encode_image
from upscaler.compute.encode_options import EncodeOptions
from upscaler.compute.images import DecodedImage, decode_image
from upscaler.settings.jobs import JobFields

MAX = 10**8


def _image(bits: int = 8, alpha: bool = False, icc: bytes | None = None) -> DecodedImage:
    rgb = np.asarray(photo("coffee", (48, 32)), np.float32) / 255.0
    plane = None
    if alpha:
        plane = np.ones(rgb.shape[:2], np.float32)
        plane[:, :16] = 0.0  # the left third transparent
    return DecodedImage(rgb, plane, "rgb", bits, icc, "PNG")


def test_jpeg_through_the_engine_is_444_with_quality_dpi_and_icc(app):
    icc = wide_gamut_icc()
    r = upload(app, png_bytes(photo("coffee", (40, 30)), icc_profile=icc), model="tiny-rrdb",
               upscale_factor=2, target_dpi=300, output_format="jpg", jpeg_quality=80)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputUrl"].endswith(".jpeg")
    got = app.get(body["outputUrl"])
    assert got.headers["content-type"] == "image/jpeg"
    out = Image.open(io.BytesIO(got.content))
    assert out.format == "JPEG" and out.size == (80, 60) and out.mode == "RGB"
    assert JpegImagePlugin.get_sampling(out) == 0  # 4:4:4
    assert out.info["jfif_unit"] == 1 and out.info["jfif_density"] == (300, 300)
    assert out.info["icc_profile"] == icc
    ref = io.BytesIO()
    out.convert("RGB").save(ref, "JPEG", quality=80, subsampling=0)
    assert Image.open(ref).quantization == out.quantization  # quality 80's tables


def test_jpeg_of_16bit_alpha_is_8bit_flattened_over_white():
    out = Image.open(io.BytesIO(encode_image(_image(16, alpha=True), "jpeg", 150)))
    assert out.mode == "RGB" and out.info["dpi"] == (150, 150)
    pixels = np.asarray(out).astype(int)
    assert pixels[:, :12].min() >= 250  # transparent: the paper's white
    src = np.asarray(photo("coffee", (48, 32))).astype(int)
    assert np.abs(pixels[:, 24:] - src[:, 24:]).mean() < 3  # opaque: the photo (quality 95)


def test_jpeg_of_gray_is_gray():
    gray = _image()
    gray = DecodedImage(np.repeat(gray.rgb[..., :1], 3, axis=2), None, "gray", 8, None, "PNG")
    assert Image.open(io.BytesIO(encode_image(gray, "jpeg", 300))).mode == "L"


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize(("name", "code"), [("none", 1), ("lzw", 5), ("deflate", 8)])
def test_tiff_compression_both_writers(bits, name, code):
    data = encode_image(_image(bits, alpha=bits == 16), "tiff", 300, tiff_compression=name)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        assert page.compression == code and page.bitspersample == bits
        assert page.asarray().shape == (32, 48, 4 if bits == 16 else 3)


def test_tiff_compression_per_request_through_the_engine(app):
    r = upload(app, png_bytes(photo("coffee", (40, 30))), model="tiny-rrdb", upscale_factor=2,
               output_format="tiff", tiff_compression="lzw")
    assert r.status_code == 200, r.text
    with tifffile.TiffFile(io.BytesIO(app.get(r.json()["outputUrl"]).content)) as tif:
        assert tif.pages[0].compression == 5


@pytest.mark.parametrize(("value", "expected"), [("tiff_adobe_deflate", "deflate"),
                                                 ("tiff_lzw", "lzw"), ("raw", "none"),
                                                 ("LZW", "lzw"), ("none", "none")])
def test_tiff_compression_setting_takes_the_three_names_and_the_old_ones(value, expected):
    assert JobFields(tiff_compression=value).tiff_compression == expected
    with pytest.raises(ValueError):
        JobFields(tiff_compression="jpeg")


def test_jpeg_past_65535_px_refused_in_the_plan_and_at_submit(app):
    sizing = {"target_width": 70000, "target_height": 100}
    plan = app.get("/api/plan", params={"width": 7000, "height": 10, "output_format": "jpeg",
                                        **sizing})
    assert plan.status_code == 422 and plan.json()["error"] == "jpeg_too_large"
    assert app.get("/api/plan", params={"width": 7000, "height": 10, "output_format": "tiff",
                                        **sizing}).status_code == 200
    strip = png_bytes(Image.new("RGB", (7000, 10), (90, 120, 30)))
    r = upload(app, strip, model="tiny-rrdb", output_format="jpeg", **sizing)
    assert r.status_code == 422 and r.json()["error"] == "jpeg_too_large", r.text
    assert "65,535" in r.json()["message"]


@pytest.mark.parametrize("field", [{"jpeg_quality": 0}, {"jpeg_quality": 101},
                                   {"tiff_compression": "zip"}, {"metadata": "drop"},
                                   {"output_profile": "adobe"}, {"output_format": "gif"},
                                   {"keep_gps": "maybe"}])
def test_bad_values_are_refused(app, field):
    r = upload(app, png_bytes(photo("coffee", (16, 16))), model="tiny-rrdb", **field)
    assert r.status_code == 422, r.text


def test_srgb_8bit_is_what_littlecms_gives():
    icc = wide_gamut_icc()
    image = _image(8, icc=icc)
    out = Image.open(io.BytesIO(encode_image(image, "png", 300,
                                             options=EncodeOptions(output_profile="srgb"))))
    assert out.info["icc_profile"] == srgb_icc()
    src = Image.fromarray((image.rgb * 255 + 0.5).astype(np.uint8))
    expected = ImageCms.profileToProfile(src, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                         ImageCms.createProfile("sRGB"))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert not np.array_equal(np.asarray(out), np.asarray(src))  # the colours moved
    kept = Image.open(io.BytesIO(encode_image(image, "png", 300)))
    assert kept.info["icc_profile"] == icc and np.array_equal(np.asarray(kept), np.asarray(src))


def test_srgb_16bit_keeps_16_bits():
    icc = wide_gamut_icc()
    image = _image(16, icc=icc)
    data = encode_image(image, "tiff", 300, options=EncodeOptions(output_profile="srgb"))
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        out = tif.pages[0].asarray()
        assert out.dtype == np.uint16 and bytes(tif.pages[0].tags[34675].value) == srgb_icc()
    expected = imagecodecs.cms_transform(image.rgb, icc, srgb_icc(), colorspace="rgb",
                                         outcolorspace="rgb")
    expected = (np.clip(expected, 0, 1) * 65535 + 0.5).astype(np.uint16)
    assert np.array_equal(out, expected)
    eight = decode_image(encode_image(_image(8, icc=icc), "png", 300,
                                      options=EncodeOptions(output_profile="srgb")), MAX)
    assert np.abs(out / 65535.0 - eight.rgb).max() < 3 / 255  # the same conversion


def test_srgb_through_the_engine(app):
    r = upload(app, png_bytes(photo("coffee", (40, 30)), icc_profile=wide_gamut_icc()),
               model="tiny-rrdb", upscale_factor=2, output_profile="srgb")
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(app.get(r.json()["outputUrl"]).content))
    assert out.info["icc_profile"] == srgb_icc()


def test_cli_flags_become_the_api_fields(tmp_path):
    from upscaler_client.cli import build_parser, upscale_options

    args = build_parser().parse_args([
        "upscale", "a.png", "--format", "jpg", "--jpeg-quality", "88", "--tiff-compression",
        "lzw", "--metadata", "strip", "--keep-gps", "--output-profile", "srgb"])
    options = upscale_options(args)
    assert {k: options[k] for k in ("output_format", "jpeg_quality", "tiff_compression",
                                    "metadata", "keep_gps", "output_profile")} == {
        "output_format": "jpeg", "jpeg_quality": 88, "tiff_compression": "lzw",
        "metadata": "strip", "keep_gps": True, "output_profile": "srgb"}
    by_name = upscale_options(build_parser().parse_args(["upscale", "a.png", "-o", "x.JPG"]))
    assert by_name["output_format"] == "jpeg" and by_name["keep_gps"] is None
