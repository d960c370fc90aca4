"""Real photos (scikit-image's), PNG bytes, and how close two images are."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> Image.Image:
    from skimage import data

    im = Image.fromarray(getattr(data, name)())
    return im.resize(size, Image.BICUBIC) if size else im


def png_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    top = 255.0 if max(a.max(), b.max()) > 1.5 else 1.0
    return float("inf") if mse == 0 else 10 * np.log10(top * top / mse)
