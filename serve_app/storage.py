"""Job storage behind fsspec: a local folder by default, any fsspec URL (s3://, gs://, ...) later.

Every node reaches the same location through its URL; nothing here assumes a disk shared between
processes beyond what the URL names.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec


class Storage:
    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self._is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                    else (self.fs.protocol,))
        if self._is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: readers never see a half-written file."""
        final = self.path(key)
        parent = posixpath.dirname(final)
        if self._is_local:
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{final}.{uuid.uuid4().hex}.tmp"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, final)
        else:  # object stores make a single PUT visible atomically
            self.fs.pipe_file(final, data)

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path(key), mode)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def list(self, prefix: str) -> Iterator[str]:
        """Keys (relative to the root) directly under a prefix folder."""
        folder = self.path(prefix)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return
        for entry in entries:
            yield posixpath.relpath(entry, self.root)
