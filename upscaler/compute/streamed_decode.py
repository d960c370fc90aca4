"""Big 8-bit RGB(A) uploads (PNG, TIFF, JPEG) decoded strip by strip into an on-disk ``Canvas``,
with libvips reading the file in sequential access: a job, or a check, then holds a strip of
its input rather than all of it (bench/bench_memory.py). Every other upload is decoded in
memory (``upscaler.compute.images``), the same pixels (tests/test_streamed_decode.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from upscaler.compute.canvas_file import Canvas
from upscaler.compute.images import (
    DecodedImage,
    decode_image,
    is_streamed,
    open_upload,
    strip_rows,
)
from upscaler.compute.metadata import read_metadata
from upscaler.errors import InvalidImage


def _head(source: bytes | Path) -> bytes:
    if isinstance(source, bytes):
        return source[:64]
    with source.open("rb") as f:
        return f.read(64)


def _strips(source: bytes | Path, width: int, height: int, bands: int, rows: int
            ) -> Iterator[tuple[int, np.ndarray]]:
    """(top, rows x width x bands uint8) from the top down; a file libvips cannot decode to
    the end (corrupt, truncated) raises ``InvalidImage``."""
    import pyvips

    pyvips.cache_set_max(0)  # nothing kept once a strip is out
    pyvips.concurrency_set(1)  # a sequential read gains nothing from threads, each a buffer
    try:
        # A Source reads the bytes where they are (new_from_buffer took a copy of them).
        image = pyvips.Image.new_from_source(
            pyvips.Source.new_from_memory(source) if isinstance(source, bytes)
            else pyvips.Source.new_from_file(str(source)), "", access="sequential",
            fail_on="error")
        if (image.width, image.height, image.bands, image.format) != (
                width, height, bands, "uchar"):
            raise InvalidImage(f"the image decodes as {image.width}x{image.height}, "
                               f"{image.bands} {image.format} bands; its header says "
                               f"{width}x{height}, {bands} bytes")
        for top in range(0, height, rows):
            count = min(rows, height - top)
            data = image.crop(0, top, width, count).write_to_memory()
            yield top, np.frombuffer(data, np.uint8).reshape(count, width, bands)
    except pyvips.Error as exc:
        raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from exc


def check_decodes(data: bytes, max_pixels: int) -> None:
    """Decode the whole image once and drop it: a corrupt or truncated upload is refused
    here, before it is stored or any engine time is spent (``upscaler.compute.memory
    .decode_bytes`` at its peak; the Ingress runs it in a worker process,
    ``upscaler.compute.decode_worker``). A big 8-bit one a strip at a time, as its job will."""
    with open_upload(data, max_pixels) as im:
        streamed = is_streamed(im, data[:64])
        width, height, bands, rows = im.width, im.height, len(im.mode), strip_rows(im)
    if not streamed:
        decode_image(data, max_pixels)
        return
    for _ in _strips(data, width, height, bands, rows):
        pass


def decode_to_canvas(source: bytes | Path, folder: Path, max_pixels: int
                     ) -> DecodedImage | None:
    """The upload (its bytes, or a file of them) decoded into a ``Canvas`` (uint8 RGB) in
    ``folder``, its alpha (if any) in memory; None for an upload decoded in memory. The canvas
    goes with ``folder``."""
    with open_upload(source, max_pixels) as im:
        if not is_streamed(im, _head(source)):
            return None
        width, height, bands, rows = im.width, im.height, len(im.mode), strip_rows(im)
        icc, fmt, metadata = im.info.get("icc_profile"), str(im.format), read_metadata(im)
    rgb = Canvas(folder, height, width, 3, np.uint8)
    alpha = np.empty((height, width), np.uint8) if bands == 4 else None
    try:
        for top, strip in _strips(source, width, height, bands, rows):
            rgb.write_rows(top, strip[..., :3])
            if alpha is not None:
                alpha[top:top + strip.shape[0]] = strip[..., 3]
    except BaseException:
        rgb.close()
        raise
    return DecodedImage(rgb, alpha, "rgb", 8, icc, fmt, metadata=metadata)
