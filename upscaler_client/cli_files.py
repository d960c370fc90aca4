"""The command line's files: the images a run takes (files, folders) and where each result
goes."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


class UsageError(Exception):
    pass


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Files as given, and the images of each folder (not recursive), in name order."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir()
                                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not found:
        raise UsageError("no images found in " + ", ".join(map(str, paths)))
    return found


def plan_outputs(inputs: list[Path], output: Path | None, fmt: str | None) -> list[Path]:
    """Where each result goes. One input: ``-o`` is the file (or a folder to put it in).
    Several: ``-o`` is a folder (made when missing) holding ``<stem>.<format>``; no ``-o``:
    beside each input as ``<stem>.upscaled.<format>``. Names that would collide get -2, -3."""
    ext = {"tif": "tiff"}.get(fmt or "png", fmt or "png")
    if output is not None and len(inputs) == 1 and not output.is_dir() \
            and not str(output).endswith(os.sep):
        return [output]
    if output is not None:
        if output.exists() and not output.is_dir():
            raise UsageError(f"-o {output}: with several inputs, -o must be a folder")
        output.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    planned = []
    for src in inputs:
        folder, stem = (output, src.stem) if output else (src.parent, f"{src.stem}.upscaled")
        candidate, n = folder / f"{stem}.{ext}", 1
        while candidate in taken:
            n += 1
            candidate = folder / f"{stem}-{n}.{ext}"
        taken.add(candidate)
        planned.append(candidate)
    return planned
