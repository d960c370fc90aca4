"""The fast 8-bit PNG writer (fpng) and the 16-bit PNG encoder: exact pixels, DPI and ICC kept,
the filters they use, and the fallbacks when fpng cannot write an image."""

from __future__ import annotations

import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from helpers.image_files import SRGB_ICC, _rng, dpi_of, reopen, rgb16
from PIL import Image

from upscaler.compute.encode import encode_image
from upscaler.compute.images import DecodedImage
from upscaler.compute.png import FPNG_MAX_SIDE, fpng_encode, fpng_fits

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
