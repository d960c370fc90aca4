"""Small synthetic images for tests/test_images*.py: random pixels, encoded bytes, what to read
back from them (DPI, PNG chunks), a PNG header that claims any size, a CMYK image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms

MAX = 40_000_000
W, H = 24, 16

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


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


def cmyk_image() -> Image.Image:
    arr = _rng(9).integers(0, 256, (H, W, 4), dtype=np.uint8)
    arr[..., 3] //= 4  # a little black
    return Image.fromarray(arr, "CMYK")
