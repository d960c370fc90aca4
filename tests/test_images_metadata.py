"""What an image carries besides its pixels, decoded and encoded again: EXIF orientation, ICC
profiles, DPI; the encoder's refusals and clipping."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from helpers.image_files import (
    MAX,
    SRGB_ICC,
    H,
    W,
    as8,
    as16,
    cmyk_image,
    dpi_of,
    png_chunk,
    reopen,
    rgb8,
    save,
)
from PIL import Image

from upscaler.compute.encode import encode_image
from upscaler.compute.images import DecodedImage, decode_image, probe_image

# --- orientation, ICC, DPI -------------------------------------------------------------------


def test_exif_orientation_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = save(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (40, 20)

    dec = decode_image(data, MAX)
    assert (dec.width, dec.height) == (20, 40)
    px = as8(dec.rgb)
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 60  # stored left is now the top
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 60
    probe = probe_image(data, MAX)
    assert (probe.width, probe.height) == (20, 40)
    assert probe.format == "JPEG"
    assert Image.open(io.BytesIO(encode_image(dec, "png", 300))).size == (20, 40)


def test_broken_exif_does_not_reject_image():
    data = save(Image.fromarray(rgb8()), "JPEG", exif=b"Exif\x00\x00garbage-not-a-tiff")
    dec = decode_image(data, MAX)
    assert (dec.width, dec.height) == (W, H)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_to_16bit_tiff_like_8bit(orientation):
    src8 = rgb8(w=6, h=4)
    tag = [(0x0112, 3, 1, orientation, True)]
    buf8, buf16 = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(buf8, src8, photometric="rgb", extratags=tag)
    tifffile.imwrite(buf16, src8.astype(np.uint16) * 257, photometric="rgb", extratags=tag)
    dec8 = decode_image(buf8.getvalue(), MAX)
    dec16 = decode_image(buf16.getvalue(), MAX)
    assert (dec8.bit_depth, dec16.bit_depth) == (8, 16)
    expected_size = (4, 6) if orientation >= 5 else (6, 4)
    assert (dec8.width, dec8.height) == expected_size
    assert (dec16.width, dec16.height) == expected_size
    assert np.array_equal(as16(dec16.rgb), as8(dec8.rgb).astype(np.uint16) * 257)
    probe = probe_image(buf16.getvalue(), MAX)
    assert (probe.width, probe.height) == expected_size


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied_to_16bit_png_like_8bit(orientation):
    src8 = rgb8(w=6, h=4)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data8 = save(Image.fromarray(src8), "PNG", exif=exif.tobytes())
    png16 = bytes(imagecodecs.png_encode(src8.astype(np.uint16) * 257))
    ihdr_end = 8 + 8 + 13 + 4
    data16 = png16[:ihdr_end] + png_chunk(b"eXIf", exif.tobytes()) + png16[ihdr_end:]
    dec8 = decode_image(data8, MAX)
    dec16 = decode_image(data16, MAX)
    assert dec16.bit_depth == 16
    assert (dec16.width, dec16.height) == (dec8.width, dec8.height)
    assert np.array_equal(as16(dec16.rgb), as8(dec8.rgb).astype(np.uint16) * 257)


@pytest.mark.parametrize("src_fmt", ["PNG", "JPEG", "TIFF"])
@pytest.mark.parametrize("out", ["png", "tiff"])
def test_icc_profile_kept(src_fmt, out):
    data = save(Image.fromarray(rgb8()), src_fmt, icc_profile=SRGB_ICC)
    dec = decode_image(data, MAX)
    assert dec.icc_profile == SRGB_ICC
    assert reopen(encode_image(dec, out, 300)).info.get("icc_profile") == SRGB_ICC


def test_icc_profile_kept_with_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(Image.fromarray(rgb8()), "JPEG", exif=exif.tobytes(), icc_profile=SRGB_ICC)
    dec = decode_image(data, MAX)
    assert (dec.width, dec.height) == (H, W)
    assert dec.icc_profile == SRGB_ICC


@pytest.mark.parametrize("out", ["png", "tiff"])
@pytest.mark.parametrize("dpi", [72, 300, 600])
def test_dpi_written(out, dpi):
    dec = decode_image(save(Image.fromarray(rgb8()), "PNG"), MAX)
    assert round(dpi_of(encode_image(dec, out, dpi))) == dpi


@pytest.mark.parametrize("out", ["png", "tiff"])
def test_dpi_written_for_gray_and_cmyk(out):
    gray = decode_image(save(Image.fromarray(rgb8()).convert("L"), "PNG"), MAX)
    assert round(dpi_of(encode_image(gray, out, 300))) == 300
    cmyk = decode_image(save(cmyk_image(), "TIFF"), MAX)
    assert round(dpi_of(encode_image(cmyk, out, 300))) == 300


def test_encode_refuses_unknown_format():
    dec = decode_image(save(Image.fromarray(rgb8()), "PNG"), MAX)
    with pytest.raises(ValueError):
        encode_image(dec, "gif", 300)


def test_encode_clips_out_of_range_pixels():
    rgb = np.full((H, W, 3), 1.5, np.float32)
    rgb[0, 0] = -0.5
    image = DecodedImage(rgb, None, "rgb", 8, None, "PNG")
    back = np.asarray(reopen(encode_image(image, "png", 300)))
    assert back[0, 0].tolist() == [0, 0, 0]
    assert back[1, 1].tolist() == [255, 255, 255]
