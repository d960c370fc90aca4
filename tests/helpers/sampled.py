"""Checking a big output at sampled places without decoding it whole: regions of a tiled TIFF
(only the tiles they touch), rows of a PNG decoded as a stream, and what the model gives on a
region's own input alone."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def tiff_region(path: Path, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows y0:y1, columns x0:x1 of a tiled TIFF's first page, reading only its tiles."""
    import tifffile

    with tifffile.TiffFile(path) as tif, open(path, "rb") as fh:
        page = tif.pages[0]
        th, tw = page.tilelength, page.tilewidth
        across = -(-page.imagewidth // tw)
        samples = page.samplesperpixel
        out = np.empty((y1 - y0, x1 - x0, samples), page.dtype)
        for ty in range(y0 // th, -(-y1 // th)):
            for tx in range(x0 // tw, -(-x1 // tw)):
                index = ty * across + tx
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
                tile = np.asarray(page.decode(data, index)[0]).reshape(th, tw, samples)
                ty0, tx0 = ty * th, tx * tw
                ys, ye = max(y0, ty0), min(y1, ty0 + th)
                xs, xe = max(x0, tx0), min(x1, tx0 + tw)
                out[ys - y0:ye - y0, xs - x0:xe - x0] = tile[ys - ty0:ye - ty0,
                                                            xs - tx0:xe - tx0]
        return out if samples > 1 else out[..., 0]


def png_rows(path: Path, chunk: int = 1 << 22) -> Iterator[tuple[int, np.ndarray]]:
    """(y, row) of an 8-bit PNG whose rows use filters None or Sub (what the streamed writer
    writes), decoded as a stream: memory holds a few rows, not the image."""
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        inflate, pending, y = zlib.decompressobj(), b"", 0
        width = channels = 0
        while True:
            length, kind = struct.unpack(">I4s", fh.read(8))
            if kind == b"IHDR":
                body = fh.read(length)
                width, height, depth, colour = struct.unpack(">IIBB", body[:10])
                assert depth == 8
                channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
                fh.read(4)
                continue
            if kind == b"IEND":
                return
            if kind != b"IDAT":
                fh.seek(length + 4, 1)
                continue
            left = length
            stride = width * channels + 1
            while left:
                pending += inflate.decompress(fh.read(min(chunk, left)))
                left -= min(chunk, left)
                rows = len(pending) // stride
                block = np.frombuffer(pending[:rows * stride], np.uint8).reshape(rows, stride)
                pending = pending[rows * stride:]
                for raw in block:
                    assert raw[0] in (0, 1), f"row {y}: filter {raw[0]}"
                    row = raw[1:].reshape(width, channels)
                    if raw[0] == 1:  # Sub: a running sum along the row, modulo 256
                        row = np.cumsum(row, axis=0, dtype=np.uint8)
                    yield y, row
                    y += 1
            fh.read(4)


def model_region(engine, image, model: str, scale: int, context: int, y0: int, y1: int,
                 x0: int, x1: int) -> np.ndarray:
    """Output rows y0:y1, columns x0:x1 (multiples of ``scale``) as the model makes them on
    that region's input with ``context`` pixels around it, run alone."""
    from upscaler.compute.dimensions import calculate_output_dimensions

    iy0, iy1, ix0, ix1 = y0 // scale, y1 // scale, x0 // scale, x1 // scale
    cy0, cx0 = max(0, iy0 - context), max(0, ix0 - context)
    cy1, cx1 = min(image.height, iy1 + context), min(image.width, ix1 + context)
    crop = image.with_pixels(np.ascontiguousarray(image.rgb[cy0:cy1, cx0:cx1]), None)
    plan = calculate_output_dimensions(cx1 - cx0, cy1 - cy0, scale)
    out = engine.upscale(crop, model, plan).image.rgb
    return out[(iy0 - cy0) * scale:(iy1 - cy0) * scale, (ix0 - cx0) * scale:(ix1 - cx0) * scale]
