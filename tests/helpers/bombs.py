"""Hostile PNGs built byte by byte: headers that lie about their size, and real images that
are tiny on disk and huge once decoded."""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (the pixel data would be gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b""))


def rgba16_flat(side: int) -> bytes:
    """A real 16-bit RGBA PNG of side x side, flat grey: a few hundred KB that decode to
    gigabytes of float32 (6324 px: 40 MP, just under the default input cap)."""
    row = b"\0" + b"\x80\x00" * 4 * side  # filter byte + RGBA16 pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def with_text(png: bytes, keyword: str, text: str) -> bytes:
    """The PNG with a tEXt chunk right after its header."""
    ihdr_end = 8 + 8 + 13 + 4
    chunk = png_chunk(b"tEXt", keyword.encode() + b"\0" + text.encode())
    return png[:ihdr_end] + chunk + png[ihdr_end:]
