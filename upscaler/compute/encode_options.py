"""How a result is written beyond its format and DPI: the request's print options, handed to
``upscaler.compute.encode.encode_image`` as one small object (``OutputOptions.encode_options``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TiffCompression = Literal["none", "lzw", "deflate"]
# Each name as Pillow (libtiff) and tifffile spell it.
PILLOW_TIFF_COMPRESSION = {"none": "raw", "lzw": "tiff_lzw", "deflate": "tiff_adobe_deflate"}
TIFFFILE_COMPRESSION = {"none": None, "lzw": "lzw", "deflate": "zlib"}


@dataclass(frozen=True)
class EncodeOptions:
    jpeg_quality: int = 95
    metadata: Literal["keep", "strip"] = "keep"  # EXIF, XMP, IPTC (never the DPI or ICC)
    keep_gps: bool = False
    output_profile: Literal["input", "srgb"] = "input"
