"""A raw image file on local disk (a ``Canvas``) and the scratch folders that hold them.

A canvas is written and read with ``pwrite`` / ``preadv``, never memory-mapped: a mapping's
dirty pages count in the process's RSS until written back, the page cache's do not. So a job
holds a tile and a strip at a time, whatever its image's size (bench/bench_memory.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_IO_CHUNK = 1 << 30  # pwrite/preadv move at most ~2 GiB a call on Linux


@contextmanager
def scratch_folder(root: Path, prefix: str = "job") -> Iterator[Path]:
    """A fresh folder under ``root`` for one job's files, removed with all of them when the
    block ends, however it ends (done, failed, cancelled). ``root`` (by default in the shared
    temp folder) must be this user's own: another's could swap the files under a job."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid") and root.stat().st_uid != os.getuid():
        raise PermissionError(f"the scratch folder {root} belongs to another user; set "
                              "UPSCALER_SCRATCH_DIR to a folder of this service's own")
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Canvas:
    """An H x W x C integer image in a file of ``folder`` (row-major, no header), written by
    rows or tile cores and read back by rows. Close it (or use it as a context manager) to
    remove the file."""

    def __init__(self, folder: Path, height: int, width: int, channels: int,
                 dtype: np.dtype | type = np.uint8):
        self.height, self.width, self.channels = height, width, channels
        self.dtype = np.dtype(dtype)
        self.row_bytes = width * channels * self.dtype.itemsize
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"canvas-{uuid.uuid4().hex}.raw"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._close_fd = weakref.finalize(self, os.close, self.fd)  # a canvas left behind
        os.ftruncate(self.fd, self.row_bytes * height)  # sparse until written

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.height

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels

    def _write(self, data: memoryview, offset: int) -> None:
        while data:
            written = os.pwrite(self.fd, data[:_IO_CHUNK], offset)
            data, offset = data[written:], offset + written

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        """Whole rows (n x W x C) from row ``top``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.shape[1:] == (self.width, self.channels), rows.shape
        self._write(memoryview(rows).cast("B"), top * self.row_bytes)

    def write_block(self, y0: int, x0: int, block: np.ndarray) -> None:
        """A rectangle (h x w x C) at (``y0``, ``x0``): one write per row (a tile's core)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        step = self.channels * self.dtype.itemsize
        flat = memoryview(block).cast("B")
        row = block.shape[1] * step
        for i in range(block.shape[0]):
            self._write(flat[i * row:(i + 1) * row], (y0 + i) * self.row_bytes + x0 * step)

    def _read_into(self, view: memoryview, offset: int) -> None:
        while view:
            got = os.preadv(self.fd, [view[:_IO_CHUNK]], offset)
            if got <= 0:
                raise OSError(f"canvas {self.path} ended early")
            view, offset = view[got:], offset + got

    def read_rows(self, top: int, count: int) -> np.ndarray:
        count = max(0, min(count, self.height - top))
        out = np.empty((count, self.width, self.channels), self.dtype)
        self._read_into(memoryview(out).cast("B"), top * self.row_bytes)
        return out

    def block(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The rectangle [y0, y1) x [x0, x1) (h x w x C): one read per row, so a crop costs
        its own bytes, not its rows' whole width."""
        out = np.empty((y1 - y0, x1 - x0, self.channels), self.dtype)
        step = self.channels * self.dtype.itemsize
        flat, row = memoryview(out).cast("B"), (x1 - x0) * step
        for i in range(y1 - y0):
            self._read_into(flat[i * row:(i + 1) * row], (y0 + i) * self.row_bytes + x0 * step)
        return out

    def close(self) -> None:
        self._close_fd()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Canvas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
