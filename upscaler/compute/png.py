"""PNG writing helpers below ``upscaler.compute.images``: the fast writers (fpng, imagecodecs)
and the metadata chunks. Design: docs/design/engines.md ("Writing PNGs fast")
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Literal

import numpy as np

# "fast": the writers above; "zlib": every PNG with zlib's defaults at png_compress_level.
PngEncoder = Literal["fast", "zlib"]
# imagecodecs.png_encode arguments for speed: Z_RLE, and PNG_FILTER_SUB alone (libpng's flag).
FAST_WIDE_ARGS: Mapping[str, int] = MappingProxyType({"strategy": 3, "filter": 16})

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR body, CRC

# fpng's header stores width and height in 16 bits (it drops the high bytes: a 70000 px wide
# image would come out claiming 4464), and it addresses its buffers with 32-bit offsets.
FPNG_MAX_SIDE = 65535
FPNG_MAX_RAW_BYTES = 2**31 - 1


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_add_metadata(png: bytes, dpi: int, icc: bytes | None, more: bytes = b"") -> bytes:
    """Insert pHYs (and iCCP, and ``more`` chunks: ``png_text_chunks``) right after IHDR,
    where the PNG spec wants them (before IDAT): for PNGs written by imagecodecs and fpng,
    which take no metadata."""
    ppm = round(dpi / 0.0254)
    extra = png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)) + more
    if icc:
        extra = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc)) + extra
    # One copy of the file: the memoryview's tail is not copied before the join.
    return b"".join((png[:_IHDR_END], extra, memoryview(png)[_IHDR_END:]))


def png_insert_chunks(png: bytes, chunks: bytes) -> bytes:
    """``chunks`` right after IHDR (for a PNG another writer finished)."""
    if not chunks:
        return png
    return b"".join((png[:_IHDR_END], chunks, memoryview(png)[_IHDR_END:]))


def png_text_chunks(exif: bytes | None, xmp: bytes | None, iptc_text: str | None) -> bytes:
    """EXIF as an eXIf chunk, XMP as iTXt ``XML:com.adobe.xmp``, IPTC as ImageMagick's zTXt
    "Raw profile type iptc" (what exiftool and Pillow read)."""
    out = b""
    if exif:
        out += png_chunk(b"eXIf", exif)
    if xmp:
        out += png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
    if iptc_text:
        out += png_chunk(b"zTXt", b"Raw profile type iptc\x00\x00" +
                         zlib.compress(iptc_text.encode("latin-1")))
    return out


def fpng_fits(arr: np.ndarray) -> bool:
    """Whether fpng can write ``arr`` exactly: H x W x 3 or 4 of uint8, within its limits."""
    if arr.ndim != 3 or arr.dtype != np.uint8 or arr.shape[2] not in (3, 4):
        return False
    height, width, channels = arr.shape
    return (0 < width <= FPNG_MAX_SIDE and 0 < height <= FPNG_MAX_SIDE
            and (width * channels + 1) * height <= FPNG_MAX_RAW_BYTES)


def fpng_encode(arr: np.ndarray) -> bytes | None:
    """``arr`` (see :func:`fpng_fits`) as a PNG with no metadata, or None where fpng cannot.

    The array is read in place when it is C-contiguous (the engines' outputs are). fpng keeps a
    filtered copy and an output buffer of the raw size while it runs: about 2x the array for
    ~0.1 s (Pillow copies an RGB image to 4 bytes a pixel, 1.33x, for ~0.7 s; an RGBA one not
    at all). Measured, a 4x job's peak RSS does not grow with it (tests/test_memory.py: it is
    the engine's). It holds the GIL throughout: fine on a replica's worker thread, never on an
    event loop.
    """
    if not fpng_fits(arr):
        return None
    import fpng

    png = fpng.from_ndarray(np.ascontiguousarray(arr))
    # py-fpng 0.1.0 builds, but does not raise, its error on failure: it returns empty bytes.
    return png if png[:8] == PNG_SIGNATURE else None


# fpng and libpng hold whole-image buffers (fpng about twice the image). Up to this size that
# is cheap and fpng is the fastest writer; past it, where memory is the limit, PNGs are
# streamed strip by strip (``streamed_png``).
WHOLE_IMAGE_MAX_PIXELS = 16_000_000
STRIP_ROWS = 64
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+A, RGB, RGBA)


def streamed_png(pixels: np.ndarray, alpha: np.ndarray | None, dpi: int, icc: bytes | None,
                 level: int, more: bytes = b"") -> bytes:
    """``pixels`` (H x W x C, or H x W, of uint8 or uint16) and an optional ``alpha`` plane as
    a PNG with DPI and ICC, written ``STRIP_ROWS`` rows at a time: memory stays at the
    compressed file and one strip; no whole-image copy is made, not even to join the alpha."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, colours = pixels.shape

    def strips() -> Iterator[np.ndarray]:
        for top in range(0, height, STRIP_ROWS):
            strip = pixels[top:top + STRIP_ROWS]
            if alpha is not None:
                strip = np.concatenate([strip, alpha[top:top + STRIP_ROWS, :, None]], axis=2)
            yield strip

    out = bytearray()
    write_png_stream(out.extend, width, height, colours + (alpha is not None),
                     pixels.dtype == np.uint16, strips(), dpi, icc, level, more)
    return out  # a bytearray: handing it on as it is spares a copy of the whole file


def write_png_stream(write: Callable[[bytes], object], width: int, height: int,
                     channels: int, wide: bool, strips: Iterable[np.ndarray], dpi: int,
                     icc: bytes | None, level: int, more: bytes = b"") -> None:
    """A PNG of ``height`` rows of ``width`` x ``channels`` samples (16 bits when ``wide``,
    else 8), from ``strips`` (n x W x C arrays, top to bottom), passed to ``write`` chunk by
    chunk (a file's write: nothing of the image is held beyond one strip). zlib's RLE
    strategy with the Sub filter, as the fast 16-bit path. ``more`` (ready chunks: EXIF, XMP,
    IPTC from ``png_text_chunks``) goes before the pixels, after pHYs and iCCP."""
    depth = 16 if wide else 8
    bpp = channels * depth // 8  # bytes a pixel: the Sub filter's distance
    write(PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, depth, _COLOR_TYPES[channels], 0, 0, 0)))
    write(png_add_metadata(PNG_SIGNATURE + b"\0" * (_IHDR_END - 8), dpi, icc,
                           more)[_IHDR_END:])
    comp = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    rows_written = 0
    for strip in strips:
        if strip.ndim == 2:
            strip = strip[..., None]
        if depth == 16:
            strip = strip.astype(">u2")  # PNG's samples are big-endian
        rows = np.ascontiguousarray(strip).view(np.uint8).reshape(len(strip), width * bpp)
        filtered = np.empty((len(rows), width * bpp + 1), np.uint8)
        filtered[:, 0] = 1  # Sub: each byte less the one a pixel to its left
        filtered[:, 1:1 + bpp] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, 1 + bpp:])
        rows_written += len(rows)
        if data := comp.compress(filtered):
            write(png_chunk(b"IDAT", data))
    if rows_written != height:
        raise ValueError(f"PNG strips gave {rows_written} rows, not {height}")
    write(png_chunk(b"IDAT", comp.flush()) + png_chunk(b"IEND", b""))
