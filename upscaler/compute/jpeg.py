"""JPEG outputs, as print labs take them: 8-bit, 4:4:4 chroma, the DPI in the JFIF header, the
ICC profile, EXIF and XMP in APP1, IPTC in a Photoshop APP13 block.

JPEG has neither 16 bits nor alpha: 16-bit sources are written as 8-bit, and an alpha channel
is flattened over white (a print's paper)."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from upscaler.compute.images import DecodedImage, srgb_profile
from upscaler.compute.metadata import EXIF_PREFIX, PHOTOSHOP_IPTC, ImageMetadata

JPEG_MAX_SIDE = 65535  # the frame header's 16-bit width and height
STRIP_ROWS = 256
_APP13_MAX = 65533  # a segment's length field counts itself


def to_8bit_rows(block: np.ndarray) -> np.ndarray:
    """Float [0, 1], uint8 or uint16 rows as uint8 (rounded)."""
    if block.dtype == np.uint8:
        return block
    if block.dtype == np.uint16:
        return ((block.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return (np.clip(block, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _alpha_float(block: np.ndarray) -> np.ndarray:
    if np.issubdtype(block.dtype, np.integer):
        return block.astype(np.float32) / float(np.iinfo(block.dtype).max)
    return np.clip(block, 0.0, 1.0).astype(np.float32)


def flatten_rows(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """8-bit rows, composited over white where ``alpha`` says they are transparent."""
    if alpha is None:
        return to_8bit_rows(rgb)
    a = _alpha_float(alpha)[..., None]
    colour = _alpha_float(rgb) if np.issubdtype(rgb.dtype, np.integer) else \
        np.clip(rgb, 0.0, 1.0)
    return to_8bit_rows(colour * a + (1.0 - a))


def jpeg_pixels(image: DecodedImage) -> tuple[np.ndarray, bool]:
    """The image as H x W x 3 (or H x W for gray) uint8, built strip by strip; and whether
    it is gray."""
    gray = image.color == "gray"
    if not gray and image.alpha is None and image.rgb.dtype == np.uint8:
        return image.rgb, False  # the engine's array, as it is
    out = np.empty((image.height, image.width) if gray else (image.height, image.width, 3),
                   np.uint8)
    for top in range(0, image.height, STRIP_ROWS):
        rows = slice(top, top + STRIP_ROWS)
        alpha = None if image.alpha is None else image.alpha[rows]
        flat = flatten_rows(image.rgb[rows], alpha)
        out[rows] = flat[..., 0] if gray else flat
    return out, gray


def encode_jpeg(image: DecodedImage, dpi: int, quality: int,
                metadata: ImageMetadata | None) -> bytes:
    if max(image.width, image.height) > JPEG_MAX_SIDE:
        raise ValueError(f"JPEG holds at most {JPEG_MAX_SIDE} px a side")
    pixels, gray = jpeg_pixels(image)
    icc = image.icc_profile
    if image.color == "cmyk":
        icc = srgb_profile().tobytes()  # the pixels are sRGB now
    kwargs: dict = {"quality": quality, "subsampling": 0, "dpi": (dpi, dpi),
                    "optimize": False}
    if icc:
        kwargs["icc_profile"] = icc
    if metadata and metadata.exif:
        kwargs["exif"] = EXIF_PREFIX + metadata.exif
    if metadata and metadata.xmp:
        kwargs["xmp"] = metadata.xmp
    buf = io.BytesIO()
    Image.fromarray(pixels, "L" if gray else "RGB").save(buf, "JPEG", **kwargs)
    data = buf.getvalue()
    if metadata and metadata.iptc:
        data = with_iptc(data, metadata.iptc)
    return data


def with_iptc(jpeg: bytes, iptc: bytes) -> bytes:
    """``jpeg`` with an APP13 Photoshop block holding ``iptc``, after its JFIF APP0 (an IPTC
    block too large for one segment is dropped)."""
    resource = b"8BIM" + struct.pack(">H", PHOTOSHOP_IPTC) + b"\x00\x00" + \
        struct.pack(">I", len(iptc)) + iptc + (b"\x00" if len(iptc) % 2 else b"")
    body = b"Photoshop 3.0\x00" + resource
    if len(body) + 2 > _APP13_MAX:
        return jpeg
    at = 2  # after SOI
    if jpeg[2:4] == b"\xff\xe0":
        at += 2 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + b"\xff\xed" + struct.pack(">H", len(body) + 2) + body + jpeg[at:]
