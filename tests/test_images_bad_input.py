"""Bad input to upscaler.compute.images: empty, not an image, refused formats, truncated files,
too many pixels and decompression bombs, refused before decoding and with their codes."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from helpers.image_files import MAX, SRGB_ICC, _rng, png_header_only, rgb8, rgb16, save
from PIL import Image

from upscaler.compute.encode import encode_image
from upscaler.compute.images import DecodedImage, decode_image, probe_image
from upscaler.compute.streamed_decode import check_decodes
from upscaler.errors import UpscalerError

# --- bad input -------------------------------------------------------------------------------


def _refused(data: bytes, max_pixels: int = MAX) -> UpscalerError:
    with pytest.raises(UpscalerError) as info:
        decode_image(data, max_pixels)
    with pytest.raises(UpscalerError) as probe_info:
        check_decodes(data, max_pixels)  # what the ingress runs on every upload
    assert probe_info.value.http_status == info.value.http_status
    assert probe_info.value.code == info.value.code
    return info.value


def test_empty_bytes():
    err = _refused(b"")
    assert err.http_status == 400
    assert err.code == "empty_file"


@pytest.mark.parametrize("data", [
    bytes(_rng(11).integers(0, 256, 4096, dtype=np.uint8)),
    b"hello, this is a text file and not an image\n" * 20,
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
    b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
], ids=["random", "text", "pdf-bytes", "svg"])
def test_not_an_image(data):
    err = _refused(data)
    assert err.http_status == 415
    assert err.code == "unsupported_format"


@pytest.mark.parametrize("fmt", ["PDF", "ICO", "PPM", "TGA", "PCX", "EPS"])
def test_readable_but_not_allowed_format(fmt):
    err = _refused(save(Image.fromarray(rgb8(w=16, h=16)), fmt))
    assert err.http_status == 415
    assert err.code == "unsupported_format"


def test_truncated_png():
    data = save(Image.fromarray(rgb8(64, 48)), "PNG")
    err = _refused(data[: len(data) // 2])
    assert err.http_status == 422
    assert err.code == "corrupt_image"


def test_truncated_jpeg():
    data = save(Image.fromarray(rgb8(64, 48)), "JPEG", quality=95)
    err = _refused(data[: len(data) // 2])
    assert err.http_status == 422
    assert err.code == "corrupt_image"


def test_truncated_16bit_png():
    data = bytes(imagecodecs.png_encode(rgb16(64, 48)))
    err = _refused(data[: len(data) // 2])
    assert err.http_status == 422
    assert err.code == "corrupt_image"


def test_truncated_16bit_tiff():
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb16(64, 48), photometric="rgb")
    data = buf.getvalue()
    err = _refused(data[: len(data) // 2])
    assert err.http_status == 422
    assert err.code == "corrupt_image"


def test_over_max_pixels():
    data = save(Image.fromarray(rgb8(64, 48)), "PNG")
    err = _refused(data, max_pixels=3000)
    assert err.http_status == 413
    assert err.code == "image_too_large"
    assert "3,000" in err.message
    assert "64x48" in err.message
    # exactly at the limit is fine
    assert decode_image(data, 64 * 48).width == 64


def test_over_max_pixels_checked_after_orientation_irrelevant():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(Image.fromarray(rgb8(40, 20)), "JPEG", exif=exif.tobytes())
    assert _refused(data, max_pixels=799).http_status == 413


@pytest.mark.parametrize("width, height, bit_depth, color_type", [
    (100_000, 100_000, 8, 2),
    (100_000, 100_000, 16, 2),
    (20_000, 20_000, 8, 6),
    (9_000, 9_000, 8, 2),
    (1, 50_000_000, 8, 0),
])
def test_decompression_bomb_refused_before_decoding(monkeypatch, width, height, bit_depth,
                                                    color_type):
    data = png_header_only(width, height, bit_depth, color_type)
    assert len(data) < 200

    def no_decode(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    monkeypatch.setattr(imagecodecs, "png_decode", no_decode)
    err = _refused(data)
    assert err.http_status == 413
    assert err.code == "image_too_large"
    assert "40,000,000" in err.message


def test_limit_above_pillows_bomb_threshold_is_honoured(monkeypatch):
    # max_pixels, not Pillow's global MAX_IMAGE_PIXELS, decides what is too large
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    data = save(Image.fromarray(rgb8(48, 48)), "PNG")  # 2304 px: over Pillow's, under ours
    assert decode_image(data, 10_000).width == 48
    assert probe_image(data, 10_000).width == 48
    assert _refused(data, max_pixels=2300).http_status == 413


def test_zero_size_header_refused():
    err = _refused(png_header_only(0, 10))
    assert err.http_status in (415, 422)


def test_probe_reads_the_header_only():
    """The probe plans from the header: a truncated file is described (its pixels are checked
    by check_decodes), a header over the pixel limit is refused without decoding."""
    data = save(Image.fromarray(rgb8(w=64, h=48)), "PNG")
    truncated = data[: len(data) // 2]
    probe = probe_image(truncated, MAX)
    assert (probe.format, probe.width, probe.height, probe.has_alpha) == ("PNG", 64, 48, False)
    with pytest.raises(UpscalerError) as err:
        check_decodes(truncated, MAX)
    assert err.value.code == "corrupt_image"
    with pytest.raises(UpscalerError) as err:
        probe_image(png_header_only(60000, 60000), MAX)
    assert err.value.http_status == 413


@pytest.mark.parametrize("bits,alpha", [(8, False), (8, True), (16, False), (16, True)])
def test_big_images_are_streamed_exactly_with_dpi_and_icc(monkeypatch, bits, alpha):
    """Past the whole-image writers' size, PNGs are written strip by strip: the same pixels,
    DPI and profile."""
    monkeypatch.setattr("upscaler.compute.encode.WHOLE_IMAGE_MAX_PIXELS", 100)
    rng = np.random.default_rng(bits)
    top = 65535 if bits == 16 else 255
    dtype = np.uint16 if bits == 16 else np.uint8
    rgb = rng.integers(0, top + 1, (150, 70, 3)).astype(dtype)
    plane = rng.integers(0, top + 1, (150, 70)).astype(dtype) if alpha else None
    data = encode_image(DecodedImage(rgb, plane, "rgb", bits, SRGB_ICC, "PNG"), "png", 240)
    back = imagecodecs.png_decode(bytes(data))
    assert np.array_equal(back[..., :3], rgb)
    if alpha:
        assert np.array_equal(back[..., 3], plane)
    im = Image.open(io.BytesIO(bytes(data)))
    assert round(im.info["dpi"][0]) == 240 and im.info["icc_profile"] == SRGB_ICC
