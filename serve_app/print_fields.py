"""The upscale form's print-file fields (issue 23: formats, metadata, colour): their schema
and descriptions, the API's documentation of them. Used by ``serve_app.schemas``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo

from upscaler.compute.encode_options import EncodeOptions

DEFAULTS = EncodeOptions()

OUTPUT_FORMAT: Any = Field(
    "png", description="png, tiff or jpeg (`jpg` and `tif` accepted). PNG and TIFF keep 16 "
    "bits and alpha; JPEG is 8-bit, 4:4:4, with the DPI in its JFIF header and the ICC "
    "profile, alpha flattened over white (a print's paper), and at most 65,535 px a side "
    "(refused at submit with `jpeg_too_large`).")
JPEG_QUALITY: Any = Field(DEFAULTS.jpeg_quality, ge=1, le=100,
                          description="JPEG quality (1-100); only with output_format=jpeg.")
TIFF_COMPRESSION: Any = Field(
    None, description="TIFF compression: none, lzw or deflate (all lossless). Default: the "
    "server's setting (deflate unless configured). Only with output_format=tiff.")
METADATA: Any = Field(
    DEFAULTS.metadata,
    description="keep: the input's EXIF, XMP and IPTC are written into the output "
    "(PNG, TIFF, JPEG), EXIF with Orientation 1 (the pixels are upright), no thumbnail, and "
    "the output's pixel size and resolution; XMP's tiff:Orientation, exif:PixelX/YDimension, "
    "tiff:ImageWidth/ImageLength and tiff:X/YResolution rewritten the same way; IPTC as it "
    "was. strip: none of EXIF, XMP or IPTC. The DPI and the ICC profile are written either "
    "way (they are how the pixels print, not metadata).")
KEEP_GPS: Any = Field(
    DEFAULTS.keep_gps,
    description="Keep the EXIF GPS IFD and XMP's exif:GPS* properties (dropped by "
    "default: a photo's location is private).")
OUTPUT_PROFILE: Any = Field(
    DEFAULTS.output_profile,
    description="input: the input's ICC profile is embedded as it is (its pixels "
    "unchanged). srgb: the pixels are converted from the input's profile to sRGB with "
    "littleCMS (perceptual intent; 16-bit kept) and sRGB embedded, for labs that want sRGB "
    "(EXIF/XMP ColorSpace then say sRGB). An input without a profile is taken as sRGB.")


def lower_choice(cls: type, value: Any, info: ValidationInfo) -> Any:
    """Choices in any case; an empty tiff_compression (a form's blank select) is the
    server's default."""
    if isinstance(value, str):
        value = value.strip().lower()
        return None if value == "" and info.field_name == "tiff_compression" else value
    return value
