"""The upscale request's form fields from friendly options: a print size as ``24x16in`` or
``30x40cm`` (or a paper name), a pixel target ``4000x3000``, ``factor``, ``dpi``, ``crop``,
``format``, a ``bleed`` as ``3mm``; any other option is sent as the API field of that name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ENGINES = ("esrgan", "flux", "imagen")
CM_PER_INCH = 2.54
# Paper sizes in cm (portrait); "A4" etc. as a print size.
PAPERS_CM = {"a5": (14.8, 21.0), "a4": (21.0, 29.7), "a3": (29.7, 42.0), "a2": (42.0, 59.4),
             "a1": (59.4, 84.1), "a0": (84.1, 118.9), "letter": (21.59, 27.94),
             "legal": (21.59, 35.56), "tabloid": (27.94, 43.18)}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*[x×*]\s*(\d+(?:\.\d+)?)\s*(in|inch|inches|\"|cm|mm)?"
                      r"\s*", re.IGNORECASE)
_BLEED_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(in|inch|inches|\"|mm|cm)?\s*",
                       re.IGNORECASE)
_PIXELS_RE = re.compile(r"\s*(\d+)\s*[x×*]\s*(\d+)\s*(px)?\s*", re.IGNORECASE)
# Friendly names and the API fields they fill.
ALIASES = {"factor": "upscale_factor", "scale": "upscale_factor", "dpi": "target_dpi",
           "format": "output_format", "crop": "crop_to_target",
           "quality": "jpeg_quality", "profile": "output_profile"}


def parse_print_size(text: str) -> tuple[float, float]:
    """``24x16in``, ``24x16`` (inches), ``30x40cm``, ``300x200mm`` or ``A4`` -> inches
    (width, height). Raises ValueError with what is accepted."""
    paper = PAPERS_CM.get(text.strip().lower())
    if paper:
        return round(paper[0] / CM_PER_INCH, 4), round(paper[1] / CM_PER_INCH, 4)
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"print size {text!r}: write WIDTHxHEIGHT with a unit, e.g. 24x16in "
                         f"or 30x40cm (or a paper: {', '.join(sorted(PAPERS_CM))})")
    w, h, unit = float(m[1]), float(m[2]), (m[3] or "in").lower()
    if w <= 0 or h <= 0:
        raise ValueError(f"print size {text!r}: both sides must be positive")
    per_inch = {"cm": CM_PER_INCH, "mm": 10 * CM_PER_INCH}.get(unit, 1.0)
    return round(w / per_inch, 4), round(h / per_inch, 4)


def parse_bleed(text: str) -> tuple[float, str | None]:
    """``3mm``, ``0.125in`` or ``0.125`` -> (amount, unit), the API's ``bleed`` and
    ``bleed_unit`` (cm is sent as mm; no unit written: None, the API's default, inches).
    Raises ValueError with what is accepted."""
    m = _BLEED_RE.fullmatch(text)
    if not m:
        raise ValueError(f"bleed {text!r}: write a length with its unit, e.g. 3mm or 0.125in "
                         "(no unit: inches)")
    amount, unit = float(m[1]), (m[2] or "").lower()
    if unit == "cm":
        return round(amount * 10, 6), "mm"
    return amount, {"": None, "mm": "mm"}.get(unit, "in")


def parse_pixels(text: str) -> tuple[int, int]:
    m = _PIXELS_RE.fullmatch(text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ValueError(f"pixel size {text!r}: write WIDTHxHEIGHT in pixels, e.g. 4000x3000")
    return int(m[1]), int(m[2])


def _field(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def form_fields(options: Mapping[str, Any]) -> dict[str, str]:
    """The multipart fields for ``options`` (None values are left out, so the server's
    defaults apply). ``print_size`` takes a string or (width, height) inches; ``pixels`` a
    string or (width, height); ``bleed`` a number (in ``bleed_unit``), a string (``3mm``) or
    (amount, unit)."""
    fields: dict[str, str] = {}
    bleed_unit = None  # a unit written with the bleed wins over a bleed_unit option
    for name, value in options.items():
        if value is None:
            continue
        if name == "print_size":
            w, h = parse_print_size(value) if isinstance(value, str) else value
            fields["target_width_inches"], fields["target_height_inches"] = _field(w), _field(h)
        elif name == "bleed" and isinstance(value, (str, tuple)):
            amount, bleed_unit = parse_bleed(value) if isinstance(value, str) else value
            fields["bleed"] = _field(amount)
        elif name == "pixels":
            w, h = parse_pixels(value) if isinstance(value, str) else value
            fields["target_width"], fields["target_height"] = _field(w), _field(h)
        else:
            fields[ALIASES.get(name, name)] = _field(value)
    if bleed_unit:
        fields["bleed_unit"] = bleed_unit
    return fields


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    return engine
