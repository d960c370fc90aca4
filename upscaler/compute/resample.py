"""The one resampler every engine sizes its output with: bicubic with antialiasing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported on first use: the Imagen replica needs it only per job
    import torch


def resample(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, h, w) float in [0, 1] to (N, C, height, width)."""
    import torch.nn.functional as F

    if image.shape[-2:] == (height, width):
        return image
    out = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False,
                        antialias=True)
    return out.clamp_(0.0, 1.0)


def unit_float(array: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1]: a file's integers (uint8 / uint16) scaled by their top."""
    if not np.issubdtype(array.dtype, np.integer):
        return array
    return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)


def resample_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """An H x W (alpha) or H x W x C (colour) float array, resampled the same way."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(unit_float(plane)))
    t = t.permute(2, 0, 1)[None] if t.dim() == 3 else t[None, None]
    out = resample(t, height, width)[0]
    return np.ascontiguousarray((out.permute(1, 2, 0) if plane.ndim == 3 else out[0]).numpy())
