"""The service's resampler (bicubic with antialiasing, ``upscaler.compute.resample``) applied
band by band to a plane that need not fit in memory: each band of output rows is made from
the source rows it needs, resampled across (whole rows: exactly ``resample``'s horizontal
pass) and then down with the same antialiased bicubic weights ``resample`` uses. Equal to the
whole plane's resample up to float rounding (a 16-bit step at most once quantized)."""

from __future__ import annotations

import math

import numpy as np

from upscaler.compute.resample import unit_float

_A = -0.5  # the antialiased bicubic's kernel parameter (PyTorch's and Pillow's)
BAND_ROWS = 64


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_A + 2) * x - (_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _A
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index, the first input index it reads and its weights (one row each,
    zero-padded): the antialiased bicubic's, as PyTorch computes them."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    last = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    taps = np.arange(2 * math.ceil(support) + 1)
    weights = _cubic((taps[None, :] + first[:, None] - center[:, None] + 0.5) * invscale)
    weights[taps[None, :] >= (last - first)[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return first, weights


def _across(rows: np.ndarray, width: int) -> np.ndarray:
    """Rows resampled to ``width``, each on its own (the kernel at scale 1 down the rows is
    exactly one tap), unclamped: the clip comes after both passes, as in ``resample``."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(rows.shape[0], width), mode="bicubic", align_corners=False,
                        antialias=True)
    return out[0].permute(1, 2, 0).numpy()


class ResampledPlane:
    """``source`` (any plane with ``height``, ``width``, ``channels``, ``read_rows``: integers
    or floats in [0, 1]) read at ``height`` x ``width``, quantized to ``bits``, by bands."""

    def __init__(self, source, height: int, width: int, bits: int):
        self.source, self.height, self.width = source, height, width
        self.channels, self.bits = source.channels, bits
        self.first, self.weights = aa_weights(source.height, height)

    def read_rows(self, top: int, count: int) -> np.ndarray:
        """Rows made ``BAND_ROWS`` at a time (their float temporaries are a few bands')."""
        count = max(0, min(count, self.height - top))
        return np.concatenate([self._band(t, min(BAND_ROWS, top + count - t))
                               for t in range(top, top + count, BAND_ROWS)]) if count else \
            np.empty((0, self.width, self.channels), np.uint16 if self.bits == 16 else np.uint8)

    def _band(self, top: int, count: int) -> np.ndarray:
        from upscaler.compute.quantize import quantize_plane

        first, weights = self.first[top:top + count], self.weights[top:top + count]
        start = int(first.min())
        stop = int((first + weights.shape[1]).max())
        stop = min(stop, self.source.height)
        rows = unit_float(self.source.read_rows(start, stop - start))
        across = _across(rows, self.width).reshape(stop - start, -1)
        # Each output row: its taps' rows, weighted (the taps past the source are weight 0).
        taps = np.minimum(first[:, None] - start + np.arange(weights.shape[1]), stop - start - 1)
        # Tap by tap: one band-sized temporary, not a band per tap.
        out = np.zeros((count, across.shape[1]), np.float32)
        for t in range(weights.shape[1]):
            out += weights[:, t, None].astype(np.float32) * across[taps[:, t]]
        return quantize_plane(out.reshape(count, self.width, self.channels), self.bits)

    def close(self) -> None:
        if (close := getattr(self.source, "close", None)) is not None:
            close()


class FloatPlane:
    """An in-memory H x W (x C) plane as it is (floats or integers), for ``ResampledPlane``."""

    def __init__(self, array: np.ndarray):
        self.array = array if array.ndim == 3 else array[..., None]
        self.height, self.width, self.channels = self.array.shape

    def read_rows(self, top: int, count: int) -> np.ndarray:
        return self.array[top:top + count]
