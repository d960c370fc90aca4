"""16-bit images (upscaler.compute.images and encode) on real files: PNG and TIFF keep their
16 bits, alpha and metadata chunks, planar TIFFs, ICC profiles."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from helpers.image_files import MAX, SRGB_ICC, H, W, as16, dpi_of, png_chunks, reopen, rgb16

from upscaler.compute.encode import encode_image
from upscaler.compute.images import decode_image, probe_image

# --- 16-bit colour ---------------------------------------------------------------------------


def test_16bit_rgb_png_keeps_16_bits():
    src = rgb16()
    data = bytes(imagecodecs.png_encode(src))
    dec = decode_image(data, MAX)
    assert (dec.color, dec.bit_depth, dec.alpha) == ("rgb", 16, None)
    assert dec.rgb.dtype == np.float32
    assert np.abs(dec.rgb.astype(np.float64) * 65535 - src).max() <= 0.5
    probe = probe_image(data, MAX)
    assert (probe.format, probe.width, probe.height, probe.bit_depth) == ("PNG", W, H, 16)

    png = encode_image(dec, "png", 300)
    back = np.asarray(imagecodecs.png_decode(png))
    assert back.dtype == np.uint16
    assert np.array_equal(back, src)
    assert round(dpi_of(png)) == 300

    tif = encode_image(dec, "tiff", 300)
    back = tifffile.imread(io.BytesIO(tif))
    assert back.dtype == np.uint16
    assert np.array_equal(back, src)
    assert round(dpi_of(tif)) == 300


def test_16bit_rgba_png_keeps_alpha():
    src = rgb16(channels=4)
    dec = decode_image(bytes(imagecodecs.png_encode(src)), MAX)
    assert dec.bit_depth == 16
    assert dec.alpha is not None
    assert np.array_equal(as16(dec.alpha), src[..., 3])
    for out in ("png", "tiff"):
        encoded = encode_image(dec, out, 300)
        if out == "png":
            back = np.asarray(imagecodecs.png_decode(encoded))
        else:
            back = tifffile.imread(io.BytesIO(encoded))
        assert np.array_equal(back, src)


def test_16bit_png_metadata_chunks_are_valid():
    dec = decode_image(bytes(imagecodecs.png_encode(rgb16())), MAX)
    dec = dec.with_pixels(dec.rgb, None)
    dec.icc_profile = SRGB_ICC
    png = encode_image(dec, "png", 300)
    kinds = png_chunks(png)
    assert kinds[0] == b"IHDR"
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT")
    assert kinds.index(b"pHYs") < kinds.index(b"IDAT")
    im = reopen(png)  # Pillow checks every chunk's CRC
    assert im.info["icc_profile"] == SRGB_ICC
    assert round(im.info["dpi"][0]) == 300
    assert round(im.info["dpi"][1]) == 300


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_16bit_rgb_tiff_keeps_16_bits(planar):
    src = rgb16()
    buf = io.BytesIO()
    # a planar ("separate") TIFF is written from a samples-first array
    tifffile.imwrite(buf, src if planar == "contig" else np.moveaxis(src, -1, 0),
                     photometric="rgb", planarconfig=planar)
    data = buf.getvalue()
    dec = decode_image(data, MAX)
    assert (dec.color, dec.bit_depth, dec.alpha) == ("rgb", 16, None)
    assert dec.source_format == "TIFF"
    assert np.array_equal(as16(dec.rgb), src)
    tif = encode_image(dec, "tiff", 300)
    assert np.array_equal(tifffile.imread(io.BytesIO(tif)), src)
    assert round(dpi_of(tif)) == 300
    png = encode_image(dec, "png", 300)
    assert np.array_equal(np.asarray(imagecodecs.png_decode(png)), src)


def test_16bit_rgb_tiff_with_3_pixel_wide_planar_image():
    # shape (3, 5, 3) planar is ambiguous by shape alone: must follow the TIFF's planar config
    src = rgb16(w=3, h=5)
    buf = io.BytesIO()
    tifffile.imwrite(buf, src, photometric="rgb", planarconfig="contig")
    dec = decode_image(buf.getvalue(), MAX)
    assert (dec.width, dec.height) == (3, 5)
    assert np.array_equal(as16(dec.rgb), src)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.moveaxis(src, -1, 0), photometric="rgb", planarconfig="separate")
    dec = decode_image(buf.getvalue(), MAX)
    assert (dec.width, dec.height) == (3, 5)
    assert np.array_equal(as16(dec.rgb), src)


def test_16bit_rgb_tiff_icc_profile_read_and_written():
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb16(), photometric="rgb", iccprofile=SRGB_ICC)
    dec = decode_image(buf.getvalue(), MAX)
    assert dec.bit_depth == 16
    assert dec.icc_profile == SRGB_ICC
    assert reopen(encode_image(dec, "tiff", 300)).info["icc_profile"] == SRGB_ICC
    assert reopen(encode_image(dec, "png", 300)).info["icc_profile"] == SRGB_ICC
