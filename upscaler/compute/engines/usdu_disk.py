"""The FLUX coordinator's image on local disk, so its memory follows the tiles, not the output:
the pre-pass in float16 (what job storage keeps for resumes, so a resumed job cuts its crops from
the very pixels) in ``Canvas`` files read a crop window or a band at a time, and the redrawn
tiles as .npy files read back when a crop or a band of the blend needs them. All in a job's
scratch folder (``upscaler.compute.canvas_file.scratch_folder``). Design: docs/design/engines.md
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import numpy as np

from upscaler.compute.canvas_file import Canvas
from upscaler.compute.metadata import METADATA_BLOCKS, ImageMetadata

if TYPE_CHECKING:
    from upscaler.compute.images import DecodedImage

PREPASS_DTYPE = np.dtype(np.float16)
COPY_ROWS = 256  # rows moved at a time between an array, a canvas and the stored npz


class QuantizedPlane:
    """A float [0, 1] canvas read as the file's integers, a strip at a time (a ``Plane``)."""

    def __init__(self, canvas: Canvas, bit_depth: int):
        self.canvas, self.bit_depth = canvas, bit_depth
        self.height, self.width, self.channels = canvas.height, canvas.width, canvas.channels

    def read_rows(self, top: int, count: int) -> np.ndarray:
        from upscaler.compute.quantize import quantize_plane

        # float32 first: the very values the in-memory pre-pass (float16 made float32) gave.
        return quantize_plane(self.canvas.read_rows(top, count).astype(np.float32),
                              self.bit_depth)


@dataclass
class DiskImage:
    """A pre-pass: rgb (H x W x 3) and alpha (H x W x 1) float16 canvases, and what the output
    is written with. ``rgb.block(...)`` cuts a window (what ``usdu.render_crop`` reads)."""

    rgb: Canvas
    alpha: Canvas | None
    color: Literal["rgb", "gray", "cmyk"]
    bit_depth: int
    icc_profile: bytes | None
    source_format: str
    metadata: ImageMetadata | None = None

    @property
    def height(self) -> int:
        return self.rgb.height

    @property
    def width(self) -> int:
        return self.rgb.width

    def alpha_plane(self) -> QuantizedPlane | None:
        return None if self.alpha is None else QuantizedPlane(self.alpha, self.bit_depth)

    def close(self) -> None:
        for canvas in (self.rgb, self.alpha):
            if canvas is not None:
                canvas.close()


def image_to_disk(image: DecodedImage, folder: Path) -> DiskImage:
    """The pre-pass as it arrives (float32, in memory) written to float16 canvases by bands:
    drop the array after this, the coordinator holds none of the image."""
    height, width = image.height, image.width
    rgb = Canvas(folder, height, width, 3, PREPASS_DTYPE)
    alpha = None if image.alpha is None else Canvas(folder, height, width, 1, PREPASS_DTYPE)
    for top in range(0, height, COPY_ROWS):
        rgb.write_rows(top, image.rgb[top:top + COPY_ROWS].astype(PREPASS_DTYPE))
        if alpha is not None and image.alpha is not None:
            alpha.write_rows(top, image.alpha[top:top + COPY_ROWS, :, None]
                             .astype(PREPASS_DTYPE))
    return DiskImage(rgb, alpha, image.color, image.bit_depth, image.icc_profile,
                     image.source_format, image.metadata)


def _write_canvas_member(zf: zipfile.ZipFile, name: str, canvas: Canvas | None,
                         squeeze: bool) -> None:
    shape: tuple[int, ...] = (0,) if canvas is None else (
        (canvas.height, canvas.width) if squeeze else (canvas.height, canvas.width, 3))
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {
            "descr": np.lib.format.dtype_to_descr(PREPASS_DTYPE), "fortran_order": False,
            "shape": shape})
        if canvas is not None:
            for top in range(0, canvas.height, COPY_ROWS):
                f.write(canvas.read_rows(top, COPY_ROWS).tobytes())


def _write_small(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def write_npz(image: DiskImage, path: Path) -> None:
    """The pre-pass as the npz job storage keeps (rgb and alpha float16, the file's ICC, kind
    and metadata blocks; ``np.load`` reads it), streamed from the canvases to ``path``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_canvas_member(zf, "rgb", image.rgb, squeeze=False)
        _write_canvas_member(zf, "alpha", image.alpha, squeeze=True)
        _write_small(zf, "icc", np.frombuffer(image.icc_profile or b"", np.uint8))
        _write_small(zf, "meta", np.array(
            f"{image.color}|{image.bit_depth}|{image.source_format}"))
        for name in METADATA_BLOCKS:
            _write_small(zf, f"metadata_{name}", np.frombuffer(
                getattr(image.metadata, name, None) or b"", np.uint8))


def _read_canvas_member(zf: zipfile.ZipFile, name: str, folder: Path) -> Canvas | None:
    with zf.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if not all(shape) or fortran:
            return None  # no alpha (stored as an empty array)
        canvas = Canvas(folder, shape[0], shape[1], shape[2] if len(shape) == 3 else 1,
                        PREPASS_DTYPE)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for top in range(0, shape[0], COPY_ROWS):
            count = min(COPY_ROWS, shape[0] - top)
            rows = np.frombuffer(f.read(row * count), dtype).reshape(count, canvas.width, -1)
            canvas.write_rows(top, rows.astype(PREPASS_DTYPE))
        return canvas


def read_npz(stored: IO[bytes], folder: Path) -> DiskImage:
    """A stored pre-pass (``write_npz``'s, or a whole-array ``np.savez`` of the same members)
    copied into canvases in ``folder`` by bands, from a file object (job storage's ``open``)."""
    with zipfile.ZipFile(stored) as zf:
        names = {n.removesuffix(".npy") for n in zf.namelist()}

        def small(name: str) -> np.ndarray:
            with zf.open(f"{name}.npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)

        rgb = _read_canvas_member(zf, "rgb", folder)
        assert rgb is not None, "a stored pre-pass without pixels"
        alpha = _read_canvas_member(zf, "alpha", folder)
        color, bit_depth, source_format = small("meta").item().split("|")
        # (A pre-pass stored before metadata was kept has none.)
        blocks = {name: small(f"metadata_{name}").tobytes() or None
                  for name in METADATA_BLOCKS if f"metadata_{name}" in names}
        metadata = ImageMetadata(**blocks)
        return DiskImage(rgb, alpha, color, int(bit_depth), small("icc").tobytes() or None,
                         source_format, metadata if metadata else None)


class TileFiles(Mapping[int, np.ndarray]):
    """Redrawn tiles by index as .npy files in ``folder`` (the bytes job storage keeps), each
    read back when asked: a crop or a band of the blend holds the few tiles reaching it."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._indices: set[int] = set()

    def put_npy(self, index: int, data: bytes) -> None:
        (self.folder / f"{index}.npy").write_bytes(data)
        self._indices.add(index)

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self._indices:
            raise KeyError(index)
        return np.load(self.folder / f"{index}.npy", allow_pickle=False)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._indices))

    def __len__(self) -> int:
        return len(self._indices)

    def __contains__(self, index: object) -> bool:
        return index in self._indices
