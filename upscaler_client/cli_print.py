"""The upscale command's print flags (formats, metadata, colour, bleed), the output format an
``-o`` file name asks for, and the human line's bleed."""

from __future__ import annotations

import argparse
from typing import Any

from upscaler_client.models import Job
from upscaler_client.options import parse_bleed

FORMAT_CHOICES = ("png", "tiff", "tif", "jpeg", "jpg")
# An output file's extension and the format it asks for (one spelling each: .jpeg results).
OUTPUT_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg",
                   ".jpeg": "jpeg"}


def add_print_flags(up: argparse.ArgumentParser) -> None:
    prints = up.add_argument_group("print files (formats, metadata, colour)")
    prints.add_argument("--jpeg-quality", type=int, metavar="1-100",
                        help="JPEG quality (default 95)")
    prints.add_argument("--tiff-compression", choices=("none", "lzw", "deflate"),
                        help="TIFF compression (default: the server's, deflate)")
    prints.add_argument("--metadata", choices=("keep", "strip"),
                        help="the input's EXIF/XMP/IPTC into the output (default keep)")
    prints.add_argument("--keep-gps", action="store_true",
                        help="keep the EXIF GPS location (dropped by default)")
    prints.add_argument("--output-profile", choices=("input", "srgb"),
                        help="input: keep the input's ICC profile (default); srgb: convert")


def output_format(args: argparse.Namespace) -> str | None:
    """--format (jpg and tif spelled as the API does), else -o's extension, else None."""
    fmt = {"jpg": "jpeg", "tif": "tiff"}.get(args.format, args.format)
    if fmt is None and args.output is not None:
        fmt = OUTPUT_SUFFIXES.get(args.output.suffix.lower())
    return fmt


def print_options(args: argparse.Namespace) -> dict[str, Any]:
    """The API fields of the print-file flags (None: not sent, the server's default)."""
    return {"jpeg_quality": args.jpeg_quality, "tiff_compression": args.tiff_compression,
            "metadata": args.metadata, "keep_gps": True if args.keep_gps else None,
            "output_profile": args.output_profile}


def bleed_length(text: str) -> tuple[float, str]:
    """``--bleed 3mm`` / ``0.125in`` / ``0.125`` (inches) as (amount, unit)."""
    try:
        amount, unit = parse_bleed(text)
        return amount, unit or "in"
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bleed_text(bleed: tuple[float, str] | None, job: Job) -> str:
    """The human line's bleed: what was asked, and where the print is in the file."""
    box = job.trim_box()
    return (f", bleed {bleed[0]:g} {bleed[1]} a side, trim {box[2] - box[0]}x{box[3] - box[1]}"
            f" px at ({box[0]},{box[1]})" if bleed and box else "")
