"""Outputs that need not fit in memory: ``OutputImage``, what the writers and the fidelity
report read, strip by strip, from an engine's on-disk canvas (``canvas_file.Canvas``: its
finished, quantized tiles) or from an in-memory image alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from upscaler.compute.canvas_file import Canvas

if TYPE_CHECKING:
    import torch

    from upscaler.compute.images import DecodedImage
    from upscaler.compute.metadata import ImageMetadata

STRIP_ROWS = 64  # rows a strip reader gets at a time: a few MB even 100,000 px wide


class Plane(Protocol):
    """Rows of an H x W x C image of the file's integers (uint8 / uint16)."""

    height: int
    width: int
    channels: int

    def read_rows(self, top: int, count: int) -> np.ndarray: ...


class ArrayPlane:
    """An in-memory H x W (x C) array as a ``Plane``: floats in [0, 1] are quantized a strip
    at a time (the engines that keep their output in memory: Imagen, FLUX, resampled ESRGAN)."""

    def __init__(self, array: np.ndarray, bit_depth: int):
        self.array = array if array.ndim == 3 else array[..., None]
        self.height, self.width, self.channels = self.array.shape
        self.bit_depth = bit_depth

    def read_rows(self, top: int, count: int) -> np.ndarray:
        from upscaler.compute.quantize import quantize_plane

        return quantize_plane(self.array[top:top + count], self.bit_depth)


class ResampledAlpha:
    """An alpha plane at the input's size read at an integer multiple of it, by strips: each
    strip is resampled (``upscaler.compute.resample``) from the input rows it needs plus a
    margin beyond the kernel's reach, which gives the rows the whole plane's resample gives."""

    MARGIN = 4  # input rows: bicubic reads 2 on each side when enlarging

    def __init__(self, alpha: np.ndarray, scale: int, bit_depth: int):
        self.alpha, self.scale, self.bit_depth = alpha, scale, bit_depth
        self.height, self.width = alpha.shape[0] * scale, alpha.shape[1] * scale
        self.channels = 1

    def read_rows(self, top: int, count: int) -> np.ndarray:
        from upscaler.compute.quantize import quantize_plane
        from upscaler.compute.resample import resample_plane

        s, rows = self.scale, self.alpha.shape[0]
        first = max(0, top // s - self.MARGIN)
        last = min(rows, -(-(top + count) // s) + self.MARGIN)
        out = resample_plane(self.alpha[first:last], (last - first) * s, self.width)
        skip = top - first * s
        return quantize_plane(out[skip:skip + count], self.bit_depth)[..., None]


@dataclass(frozen=True)
class OutputImage:
    """An engine's output as the file will hold it: colour (H x W x 3) and alpha (H x W x 1)
    planes of the file's integers, read by strips; ``box`` (left, top, right, bottom) is the
    part written (the applied crop), all of it when None."""

    pixels: Plane
    alpha: Plane | None
    color: Literal["rgb", "gray", "cmyk"]
    bit_depth: int
    icc_profile: bytes | None
    source_format: str
    box: tuple[int, int, int, int] | None = None
    metadata: ImageMetadata | None = None  # the input's EXIF/XMP/IPTC, written as asked

    @classmethod
    def from_decoded(cls, image: DecodedImage) -> OutputImage:
        return cls(ArrayPlane(image.rgb, image.bit_depth),
                   None if image.alpha is None else ArrayPlane(image.alpha, image.bit_depth),
                   image.color, image.bit_depth, image.icc_profile, image.source_format,
                   metadata=image.metadata)

    @property
    def _box(self) -> tuple[int, int, int, int]:
        return self.box or (0, 0, self.pixels.width, self.pixels.height)

    @property
    def width(self) -> int:
        left, _, right, _ = self._box
        return right - left

    @property
    def height(self) -> int:
        _, top, _, bottom = self._box
        return bottom - top

    def cropped(self, box: tuple[int, int, int, int] | None) -> OutputImage:
        """The (left, top, right, bottom) part of this image; all of it for None."""
        if box is None:
            return self
        left, top, _, _ = self._box
        return replace(self, box=(left + box[0], top + box[1], left + box[2], top + box[3]))

    def read_rows(self, top: int, count: int, with_alpha: bool = False) -> np.ndarray:
        """``count`` rows from ``top`` (in this image's coordinates): H' x W x 3, or x 4 with
        the alpha joined when ``with_alpha`` (and there is one)."""
        left, y0, right, bottom = self._box
        count = max(0, min(count, bottom - y0 - top))
        rows = self.pixels.read_rows(y0 + top, count)[:, left:right]
        if with_alpha and self.alpha is not None:
            alpha = self.alpha.read_rows(y0 + top, count)[:, left:right]
            rows = np.concatenate([rows, alpha], axis=2)
        return rows

    def strips(self, rows: int = STRIP_ROWS, with_alpha: bool = False
               ) -> Iterator[tuple[int, np.ndarray]]:
        """(top, rows) from the first row to the last, ``rows`` at a time: what the writers
        and the fidelity report read, never the whole image."""
        for top in range(0, self.height, rows):
            yield top, self.read_rows(top, rows, with_alpha)

    def close(self) -> None:
        """Remove the canvases behind this image (in-memory planes have nothing to close)."""
        for plane in (self.pixels, self.alpha):
            if (close := getattr(plane, "close", None)) is not None:
                close()

    def to_decoded(self) -> DecodedImage:
        """The whole image in memory (small outputs, for the whole-image encoders)."""
        from upscaler.compute.images import DecodedImage

        rgb = self.read_rows(0, self.height)
        alpha = None if self.alpha is None else self.read_rows(0, self.height, True)[..., 3]
        return DecodedImage(rgb, None if alpha is None else np.ascontiguousarray(alpha),
                            self.color, self.bit_depth, self.icc_profile, self.source_format,
                            self.metadata)


class CanvasSink:
    """A tiled pass's cores quantized (as ``tiling.QuantizedSink``: clip, scale, +0.5,
    truncate) and written straight into a ``Canvas``: host memory holds one core at a time."""

    def __init__(self, canvas: Canvas, bits: int):
        self.canvas = canvas
        self.top = 65535.0 if bits == 16 else 255.0
        self.bits = bits

    def put(self, y0: int, y1: int, x0: int, x1: int, core: torch.Tensor) -> None:
        import torch

        core = core[0].clamp_(0.0, 1.0).mul_(self.top).add_(0.5).permute(1, 2, 0)
        # One pass casts (truncating, as astype) into the file's layout; torch's uint16 has few
        # CUDA kernels: 16-bit cores leave the device as int32.
        block = torch.empty(core.shape, dtype=torch.uint8 if self.bits == 8 else torch.int32,
                            device=core.device)
        block = block.copy_(core).cpu().numpy()
        self.canvas.write_block(y0, x0, block if self.bits == 8 else block.astype(np.uint16))

    def result(self) -> Canvas:
        return self.canvas
