"""HTTP byte ranges of a result (RFC 9110 section 14): one range per request, ``bytes=a-b``,
``a-`` or ``-n``, so a big download can resume where it stopped. Anything else (several ranges,
another unit, a malformed header, an ``If-Range`` that no longer matches) gets the whole file,
as the RFC allows."""

from __future__ import annotations

from collections.abc import Mapping

from upscaler.errors import RangeNotSatisfiable


def requested_range(headers: Mapping[str, str], size: int,
                    validators: Mapping[str, str]) -> tuple[int, int] | None:
    """The byte range asked for, as (start, stop) with ``stop`` exclusive, or None for the
    whole file. Raises ``RangeNotSatisfiable`` for a range wholly past the end."""
    header = headers.get("range")
    if header is None:
        return None
    if (if_range := headers.get("if-range")) is not None and if_range.strip() not in (
            validators.get("ETag"), validators.get("Last-Modified")):
        return None  # the file changed since the client's part of it: all of it
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or (
            first == last == ""):
        return None
    if first == "":  # the last n bytes
        start, stop = max(0, size - int(last)), size
        if int(last) == 0:
            raise _unsatisfiable(size)
    else:
        start = int(first)
        stop = size if last == "" else min(int(last) + 1, size)
        if last != "" and int(last) < start:
            return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, stop


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"the range asked starts past the result's {size} bytes",
                               headers={"Content-Range": f"bytes */{size}"})
