"""Image I/O: upscaler.compute.images (decode, probe) and upscaler.compute.encode on real files."""

from __future__ import annotations

import io
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from upscaler.compute.encode import encode_image
from upscaler.compute.images import (
    DecodedImage,
    check_decodes,
    decode_image,
    probe_image,
)
from upscaler.compute.png import FPNG_MAX_SIDE, fpng_encode, fpng_fits
from upscaler.errors import UpscalerError

MAX = 40_000_000
W, H = 24, 16

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- helpers ---------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rgb8(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def as8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255.0).astype(np.uint8)


def as16(x: np.ndarray) -> np.ndarray:
    return np.round(x.astype(np.float64) * 65535.0).astype(np.uint16)


def reopen(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def dpi_of(data: bytes) -> float:
    return Image.open(io.BytesIO(data)).info["dpi"][0]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A tiny PNG whose IHDR claims ``width x height``: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + n
    return kinds


def rgb16(w: int = W, h: int = H, channels: int = 3, seed: int = 1) -> np.ndarray:
    arr = _rng(seed).integers(0, 65536, (h, w, channels), dtype=np.uint16)
    arr[0, 0, 0], arr[0, 1, 0] = 0, 65535
    arr[1, 0, 0] = 257 * 3 + 1  # not representable in 8 bits
    return arr


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


# --- CMYK ------------------------------------------------------------------------------------


def cmyk_image() -> Image.Image:
    arr = _rng(9).integers(0, 256, (H, W, 4), dtype=np.uint8)
    arr[..., 3] //= 4  # a little black
    return Image.fromarray(arr, "CMYK")


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
        encode_image(dec, "jpeg", 300)


def test_encode_clips_out_of_range_pixels():
    rgb = np.full((H, W, 3), 1.5, np.float32)
    rgb[0, 0] = -0.5
    image = DecodedImage(rgb, None, "rgb", 8, None, "PNG")
    back = np.asarray(reopen(encode_image(image, "png", 300)))
    assert back[0, 0].tolist() == [0, 0, 0]
    assert back[1, 1].tolist() == [255, 255, 255]


# --- the fast 8-bit PNG writer (fpng) --------------------------------------------------------


def png_chunk_list(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, each one's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + n
    return chunks


def photo_pixels(alpha: bool) -> np.ndarray:
    """A real photo (a smooth image, unlike noise) as uint8, with a soft-edged alpha."""
    from skimage import data

    rgb = np.asarray(Image.fromarray(data.chelsea()).resize((200, 150), Image.LANCZOS))
    if not alpha:
        return rgb
    y, x = np.ogrid[-1:1:150j, -1:1:200j]
    ring = np.clip((1 - np.sqrt(x * x + y * y)) * 4, 0, 1)
    return np.dstack([rgb, (ring * 255 + 0.5).astype(np.uint8)])


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("source", ["photo", "noise"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_fpng_png_is_exact_with_dpi_and_icc(channels, source, dtype):
    """8-bit RGB and RGBA go through fpng: the file holds exactly the pixels given, whether
    the engine handed over uint8 planes or float ones, with the DPI and ICC profile."""
    src = photo_pixels(channels == 4) if source == "photo" else \
        _rng(3).integers(0, 256, (37, 53, channels), dtype=np.uint8)
    rgb = np.ascontiguousarray(src[..., :3])
    alpha = np.ascontiguousarray(src[..., 3]) if channels == 4 else None
    if dtype == "float32":
        rgb = rgb.astype(np.float32) / 255.0
        alpha = None if alpha is None else alpha.astype(np.float32) / 255.0
    image = DecodedImage(rgb, alpha, "rgb", 8, SRGB_ICC, "PNG")
    png = encode_image(image, "png", 600)
    chunks = png_chunk_list(png)
    kinds = [kind for kind, _ in chunks]
    assert b"fdEC" in kinds  # fpng's own marker: the fast path wrote it
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT")
    assert kinds.index(b"pHYs") < kinds.index(b"IDAT")
    assert dict(chunks)[b"pHYs"] == struct.pack(">IIB", 23622, 23622, 1)  # 600 dpi in px/m
    back = reopen(png)
    assert back.mode == ("RGBA" if channels == 4 else "RGB")
    assert np.array_equal(np.asarray(back), src)
    assert np.array_equal(np.asarray(imagecodecs.png_decode(png)), src)  # libpng agrees
    assert back.info["icc_profile"] == SRGB_ICC
    assert round(back.info["dpi"][0]) == 600 and round(back.info["dpi"][1]) == 600


def test_fpng_reads_the_engines_uint8_array_in_place():
    """No copy of the pixels on the way to fpng (its own buffers are C++'s, which tracemalloc
    does not see): a 12 MB image that compresses to almost nothing allocates little more than
    zlib's ~0.3 MB state for the ICC profile."""
    import tracemalloc

    rgb = np.broadcast_to(np.arange(2000).astype(np.uint8)[None, :, None], (2000, 2000, 3)).copy()
    image = DecodedImage(rgb, None, "rgb", 8, SRGB_ICC, "PNG")
    encode_image(image, "png", 300)  # imports fpng, outside the measurement
    tracemalloc.start()
    try:
        png = encode_image(image, "png", 300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b"fdEC" in [kind for kind, _ in png_chunk_list(png)]
    assert peak < rgb.nbytes / 10, peak
    assert np.array_equal(np.asarray(reopen(png)), rgb)


def test_fpng_encode_takes_strided_arrays():
    src = photo_pixels(False)
    assert fpng_fits(src)
    strided = src[::2, ::3]  # not contiguous: copied first, still exact
    assert np.array_equal(np.asarray(reopen(fpng_encode(strided))), strided)


def test_zlib_png_encoder_setting_skips_fpng():
    image = DecodedImage(photo_pixels(False), None, "rgb", 8, SRGB_ICC, "PNG")
    png = encode_image(image, "png", 300, png_encoder="zlib")
    assert b"fdEC" not in [kind for kind, _ in png_chunk_list(png)]
    back = reopen(png)
    assert np.array_equal(np.asarray(back), image.rgb)
    assert back.info["icc_profile"] == SRGB_ICC and round(dpi_of(png)) == 300


def idat_filter_types(png: bytes) -> set[int]:
    """The filter byte of every row of a non-interlaced PNG (the IHDR tells the row size)."""
    chunks = png_chunk_list(png)
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    row = 1 + width * channels * depth // 8
    assert len(raw) == row * height
    return {raw[y * row] for y in range(height)}


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_png_fast_encoder_uses_sub_filter_and_stays_exact(channels):
    src = rgb16(channels=channels)
    image = DecodedImage(src[..., :3].copy(), src[..., 3].copy() if channels == 4 else None,
                         "rgb", 16, SRGB_ICC, "PNG")
    fast, plain = (encode_image(image, "png", 300, png_encoder=e) for e in ("fast", "zlib"))
    assert idat_filter_types(fast) == {1}  # Sub on every row: the RLE+Sub path wrote it
    assert idat_filter_types(plain) != {1}
    for png in (fast, plain):
        assert np.array_equal(np.asarray(imagecodecs.png_decode(png)), src)
        assert reopen(png).info["icc_profile"] == SRGB_ICC and round(dpi_of(png)) == 300


def test_png_wider_than_fpng_can_write_falls_back_exactly():
    """fpng's header has 16 bits for each side: a wider image goes through Pillow instead of
    coming out with the wrong width."""
    src = _rng(4).integers(0, 256, (2, FPNG_MAX_SIDE + 7, 3), dtype=np.uint8)
    assert not fpng_fits(src) and fpng_encode(src) is None
    png = encode_image(DecodedImage(src, None, "rgb", 8, None, "PNG"), "png", 300)
    back = reopen(png)
    assert back.size == (FPNG_MAX_SIDE + 7, 2)
    assert np.array_equal(np.asarray(back), src)
    assert round(dpi_of(png)) == 300


def test_fpng_takes_only_8bit_rgb_and_rgba():
    assert not fpng_fits(np.zeros((4, 4), np.uint8))
    assert not fpng_fits(np.zeros((4, 4, 2), np.uint8))
    assert not fpng_fits(np.zeros((4, 4, 3), np.uint16))
    assert not fpng_fits(np.zeros((0, 4, 3), np.uint8))
    assert fpng_fits(np.zeros((1, 1, 4), np.uint8))


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
