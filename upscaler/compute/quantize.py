"""Pixels as the file's integers: the one rounding every writer and engine uses."""

from __future__ import annotations

import numpy as np


def quantize_plane(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float [0, 1] pixels as the file's integers; integers (quantized already, by an engine
    that wrote its output so) are taken as they are."""
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    if np.issubdtype(x.dtype, np.integer):
        return x if x.dtype == dtype else x.astype(dtype)
    top = 65535.0 if bit_depth == 16 else 255.0
    out = np.clip(x, 0.0, 1.0) * top + 0.5
    return out.astype(dtype)
