"""Image decoding (upscaler.compute.images) on real files: 8-bit colour, gray, CMYK, the
probe, animation. 16-bit, metadata, the PNG writer and bad input: tests/test_images_*.py."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from helpers.image_files import MAX, H, W, _rng, as8, as16, cmyk_image, dpi_of, reopen, rgb8, save
from PIL import Image, ImageCms

from upscaler.compute.encode import encode_image
from upscaler.compute.images import decode_image, probe_image
from upscaler.errors import UpscalerError

# --- 8-bit colour ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, kwargs", [("PNG", {}), ("WEBP", {"lossless": True}),
                                         ("BMP", {}), ("TIFF", {})])
def test_rgb_lossless_formats_decode_exactly(fmt, kwargs):
    src = rgb8()
    data = save(Image.fromarray(src), fmt, **kwargs)
    dec = decode_image(data, MAX)
    assert dec.source_format == fmt
    assert dec.color == "rgb"
    assert dec.bit_depth == 8
    assert dec.alpha is None
    assert dec.rgb.dtype == np.float32
    assert dec.rgb.shape == (H, W, 3)
    assert (dec.width, dec.height) == (W, H)
    assert np.array_equal(as8(dec.rgb), src)
    for out in ("png", "tiff"):
        back = reopen(encode_image(dec, out, 300))
        assert back.mode == "RGB"
        assert np.array_equal(np.asarray(back), src)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_rgb_lossy_formats_match_pillow(fmt):
    data = save(Image.fromarray(rgb8()), fmt, quality=90)
    dec = decode_image(data, MAX)
    assert dec.source_format == fmt
    assert (dec.color, dec.bit_depth, dec.alpha) == ("rgb", 8, None)
    assert np.array_equal(as8(dec.rgb), np.asarray(reopen(data).convert("RGB")))
    back = reopen(encode_image(dec, "png", 300))
    assert back.mode == "RGB"
    assert np.array_equal(np.asarray(back), as8(dec.rgb))


def test_rgba_png_alpha_survives():
    src = np.dstack([rgb8(), _rng(5).integers(0, 256, (H, W), dtype=np.uint8)])
    src[0, 0, 3], src[0, 1, 3] = 0, 255
    dec = decode_image(save(Image.fromarray(src, "RGBA"), "PNG"), MAX)
    assert dec.color == "rgb"
    assert dec.alpha is not None
    assert dec.alpha.shape == (H, W)
    assert np.array_equal(as8(dec.alpha), src[..., 3])
    for out in ("png", "tiff"):
        back = reopen(encode_image(dec, out, 300))
        assert back.mode == "RGBA"
        assert np.array_equal(np.asarray(back), src)


def test_rgba_webp_has_alpha():
    src = np.dstack([rgb8(), np.full((H, W), 128, np.uint8)])
    dec = decode_image(save(Image.fromarray(src, "RGBA"), "WEBP", lossless=True), MAX)
    assert dec.alpha is not None
    assert np.array_equal(as8(dec.alpha), src[..., 3])


def test_palette_without_transparency():
    im = Image.fromarray(rgb8()).quantize(16)
    assert im.mode == "P"
    dec = decode_image(save(im, "PNG"), MAX)
    assert dec.color == "rgb"
    assert dec.alpha is None
    assert np.array_equal(as8(dec.rgb), np.asarray(im.convert("RGB")))
    back = reopen(encode_image(dec, "png", 300))
    assert back.mode == "RGB"
    assert np.array_equal(np.asarray(back), np.asarray(im.convert("RGB")))


def test_palette_with_transparency():
    im = Image.fromarray(rgb8()).quantize(16)
    idx = np.asarray(im)
    transparent = int(idx[0, 0])
    data = save(im, "PNG", transparency=transparent)
    dec = decode_image(data, MAX)
    assert dec.color == "rgb"
    assert dec.alpha is not None
    expected_alpha = np.where(idx == transparent, 0, 255).astype(np.uint8)
    assert np.array_equal(as8(dec.alpha), expected_alpha)
    back = reopen(encode_image(dec, "png", 300))
    assert back.mode == "RGBA"
    assert np.array_equal(np.asarray(back)[..., 3], expected_alpha)


def test_rgb_png_with_trns_colour_keeps_transparency():
    src = rgb8()
    key = tuple(int(v) for v in src[0, 0])
    data = save(Image.fromarray(src), "PNG", transparency=key)
    dec = decode_image(data, MAX)
    assert dec.alpha is not None
    assert as8(dec.alpha)[0, 0] == 0
    expected = np.where(np.all(src == key, axis=2), 0, 255).astype(np.uint8)
    assert np.array_equal(as8(dec.alpha), expected)


# --- gray ------------------------------------------------------------------------------------


def test_grayscale_stays_gray():
    src = _rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    dec = decode_image(save(Image.fromarray(src), "PNG"), MAX)
    assert (dec.color, dec.bit_depth, dec.alpha) == ("gray", 8, None)
    assert dec.rgb.shape == (H, W, 3)
    assert np.array_equal(as8(dec.rgb[..., 0]), src)
    assert np.array_equal(dec.rgb[..., 0], dec.rgb[..., 2])
    for out in ("png", "tiff"):
        back = reopen(encode_image(dec, out, 300))
        assert back.mode == "L"
        assert np.array_equal(np.asarray(back), src)


def test_gray_jpeg_stays_gray():
    src = _rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    data = save(Image.fromarray(src), "JPEG")
    dec = decode_image(data, MAX)
    assert dec.color == "gray"
    assert reopen(encode_image(dec, "png", 300)).mode == "L"


def test_gray_alpha_la():
    src = np.dstack([_rng(2).integers(0, 256, (H, W), dtype=np.uint8),
                     _rng(3).integers(0, 256, (H, W), dtype=np.uint8)])
    dec = decode_image(save(Image.fromarray(src, "LA"), "PNG"), MAX)
    assert (dec.color, dec.bit_depth) == ("gray", 8)
    assert dec.alpha is not None
    assert np.array_equal(as8(dec.rgb[..., 1]), src[..., 0])
    assert np.array_equal(as8(dec.alpha), src[..., 1])
    for out in ("png", "tiff"):
        back = reopen(encode_image(dec, out, 300))
        assert back.mode == "LA"
        assert np.array_equal(np.asarray(back), src)


def test_one_bit():
    bits = _rng(4).integers(0, 2, (H, W)).astype(bool)
    im = Image.fromarray(bits)
    assert im.mode == "1"
    dec = decode_image(save(im, "PNG"), MAX)
    assert (dec.color, dec.bit_depth, dec.alpha) == ("gray", 8, None)
    expected = np.where(bits, 255, 0).astype(np.uint8)
    assert np.array_equal(as8(dec.rgb[..., 0]), expected)
    back = reopen(encode_image(dec, "png", 300))
    assert back.mode == "L"
    assert np.array_equal(np.asarray(back), expected)


def test_16bit_gray_png_round_trips_exactly():
    src = _rng(6).integers(0, 65536, (H, W), dtype=np.uint16)
    src[0, 0], src[0, 1], src[0, 2] = 0, 65535, 1
    im = Image.fromarray(src)
    assert im.mode == "I;16"
    data = save(im, "PNG")
    dec = decode_image(data, MAX)
    assert (dec.color, dec.bit_depth, dec.alpha) == ("gray", 16, None)
    assert np.array_equal(as16(dec.rgb[..., 0]), src)
    assert probe_image(data, MAX).bit_depth == 16
    for out in ("png", "tiff"):
        encoded = encode_image(dec, out, 300)
        back = reopen(encoded)
        assert back.mode.startswith("I;16")
        assert np.array_equal(np.asarray(back).astype(np.uint16), src)
        assert round(dpi_of(encoded)) == 300


def test_16bit_gray_alpha_png_keeps_16_bits():
    gray = _rng(7).integers(0, 65536, (H, W), dtype=np.uint16)
    alpha = _rng(8).integers(0, 65536, (H, W), dtype=np.uint16)
    data = bytes(imagecodecs.png_encode(np.dstack([gray, alpha])))
    dec = decode_image(data, MAX)
    assert (dec.color, dec.bit_depth) == ("gray", 16)
    assert dec.alpha is not None
    assert np.array_equal(as16(dec.rgb[..., 0]), gray)
    assert np.array_equal(as16(dec.alpha), alpha)
    back = np.asarray(imagecodecs.png_decode(encode_image(dec, "png", 300)))
    assert back.dtype == np.uint16
    assert np.array_equal(back, np.dstack([gray, alpha]))
    tif = tifffile.imread(io.BytesIO(encode_image(dec, "tiff", 300)))
    assert np.array_equal(tif, np.dstack([gray, alpha]))


# --- CMYK ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_input(fmt):
    im = cmyk_image()
    data = save(im, fmt)
    source = reopen(data)
    assert source.mode == "CMYK"
    dec = decode_image(data, MAX)
    assert (dec.color, dec.bit_depth, dec.alpha) == ("cmyk", 8, None)
    assert dec.source_format == fmt
    expected_rgb = np.asarray(source.convert("RGB"))
    assert np.array_equal(as8(dec.rgb), expected_rgb)
    assert probe_image(data, MAX).mode == "CMYK"

    tif = reopen(encode_image(dec, "tiff", 300))
    assert tif.mode == "CMYK"
    diff = np.abs(np.asarray(tif.convert("RGB")).astype(int) - expected_rgb.astype(int))
    assert diff.max() <= 1

    png = reopen(encode_image(dec, "png", 300))
    assert png.mode == "RGB"
    assert np.array_equal(np.asarray(png), expected_rgb)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(png.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


# --- probe -----------------------------------------------------------------------------------


def test_probe_describes_image():
    src = np.dstack([rgb8(), np.full((H, W), 200, np.uint8)])
    probe = probe_image(save(Image.fromarray(src, "RGBA"), "PNG"), MAX)
    assert (probe.format, probe.width, probe.height) == ("PNG", W, H)
    assert (probe.mode, probe.bit_depth, probe.has_alpha) == ("RGBA", 8, True)
    probe = probe_image(save(Image.fromarray(rgb8()), "JPEG"), MAX)
    assert (probe.format, probe.mode, probe.has_alpha) == ("JPEG", "RGB", False)


# --- animation -------------------------------------------------------------------------------


def test_animated_gif_uses_first_frame():
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    frames = [Image.new("RGB", (W, H), c) for c in colours]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    dec = decode_image(data, MAX)
    assert dec.source_format == "GIF"
    assert (dec.width, dec.height) == (W, H)
    assert as8(dec.rgb)[0, 0].tolist() == [255, 0, 0]
    assert np.all(as8(dec.rgb) == np.array([255, 0, 0], np.uint8))
    assert probe_image(data, MAX).format == "GIF"


def test_animated_gif_with_damaged_later_frame():
    frames = [Image.fromarray(rgb8(64, 48, seed=s)) for s in range(3)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    # only the first frame is read: damage after it is not even looked at
    dec = decode_image(data[:-40], MAX)
    assert np.array_equal(as8(dec.rgb), first)
    for cut in range(len(data) // 3, len(data), 211):
        try:
            decode_image(data[:cut], MAX)
        except UpscalerError as exc:
            assert exc.http_status in (415, 422)


def test_animated_webp_uses_first_frame():
    frames = [Image.new("RGB", (W, H), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    dec = decode_image(data, MAX)
    assert as8(dec.rgb)[0, 0].tolist() == [255, 0, 0]
