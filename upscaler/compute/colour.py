"""``output_profile=srgb``: pixels converted from the input's ICC profile to sRGB with littleCMS,
a block of rows at a time (so a streaming writer can apply it strip by strip).

8-bit pixels go through Pillow's ImageCms; Pillow's transforms take 8-bit modes only, so 16-bit
and float pixels go through littleCMS as imagecodecs binds it (``cms_transform``: uint16 and
float32), which keeps their precision. Both use the same engine, perceptual intent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageCms

from upscaler.compute.images import DecodedImage, srgb_profile

STRIP_ROWS = 256


@lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    return srgb_profile().tobytes()


class SrgbConverter:
    """Rows (H x W x 3, float in [0, 1], uint8 or uint16) in ``icc``'s colour space to sRGB
    rows of ``bit_depth`` integers. A gray profile's rows are read from their first channel."""

    def __init__(self, icc: bytes, bit_depth: int) -> None:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))  # raises on a broken profile
        space = profile.profile.xcolor_space.strip().upper()
        if space not in ("RGB", "GRAY"):
            raise ValueError(f"a {space} profile cannot be read as RGB pixels")
        self.icc, self.gray, self.bit_depth = icc, space == "GRAY", bit_depth
        self.dtype = np.uint16 if bit_depth == 16 else np.uint8
        self._pillow = ImageCms.buildTransform(
            profile, srgb_profile(), "L" if self.gray else "RGB", "RGB") \
            if bit_depth == 8 else None

    def rows(self, block: np.ndarray) -> np.ndarray:
        source = block[..., 0] if self.gray else block
        if self._pillow is not None:
            if not np.issubdtype(source.dtype, np.integer):
                source = (np.clip(source, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            elif source.dtype != np.uint8:
                source = (source.astype(np.uint32) * 255 + 32767) // 65535
            im = Image.fromarray(np.ascontiguousarray(source, dtype=np.uint8),
                                 "L" if self.gray else "RGB")
            return np.asarray(ImageCms.applyTransform(im, self._pillow))
        import imagecodecs

        if np.issubdtype(source.dtype, np.integer) and source.dtype != np.uint16:
            source = source.astype(np.float32) / float(np.iinfo(source.dtype).max)
        out = imagecodecs.cms_transform(
            np.ascontiguousarray(source), self.icc, srgb_icc(),
            colorspace="gray" if self.gray else "rgb", outcolorspace="rgb")
        if out.dtype == np.uint16:
            return out
        return (np.clip(out, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


@dataclass(frozen=True)
class SrgbPlan:
    """How an image of one kind becomes sRGB: the converter of its pixels (None: they are
    kept), and the colour kind and profile it is written with after."""

    converter: SrgbConverter | None
    color: Literal["rgb", "gray", "cmyk"]
    icc_profile: bytes | None


def srgb_plan(color: Literal["rgb", "gray", "cmyk"], icc: bytes | None,
              bit_depth: int) -> SrgbPlan:
    """No profile: the pixels are taken as sRGB already (what every viewer does). CMYK sources
    were decoded to sRGB already. A profile littleCMS cannot read is treated as no profile.
    A gray image with no profile stays one plane, untagged (an RGB profile cannot tag it);
    through a gray profile it becomes RGB in sRGB (neutral, but not one plane)."""
    kept = SrgbPlan(None, color, icc) if color == "gray" else SrgbPlan(None, "rgb", srgb_icc())
    if color == "cmyk" or not icc or icc == srgb_icc():
        return kept
    try:
        return SrgbPlan(SrgbConverter(icc, bit_depth), "rgb", srgb_icc())
    except (ImageCms.PyCMSError, OSError, ValueError):
        return replace(kept, icc_profile=None) if color == "gray" else kept


def to_srgb(image: DecodedImage) -> DecodedImage:
    """The image with its pixels in sRGB (integers of its bit depth) and the sRGB profile
    (``srgb_plan`` says when they are kept)."""
    plan = srgb_plan(image.color, image.icc_profile, image.bit_depth)
    if plan.converter is None:
        return replace(image, color=plan.color, icc_profile=plan.icc_profile)
    out = np.empty((image.height, image.width, 3), plan.converter.dtype)
    for top in range(0, image.height, STRIP_ROWS):
        out[top:top + STRIP_ROWS] = plan.converter.rows(image.rgb[top:top + STRIP_ROWS])
    return replace(image, rgb=out, color="rgb", icc_profile=plan.icc_profile)
