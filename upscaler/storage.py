"""Job storage behind fsspec: a local folder by default, any fsspec URL (s3://, gs://, ...) later.

Every node reaches the same location through its URL; nothing here assumes a disk shared between
processes beyond what the URL names.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec

from upscaler.errors import ServiceUnavailable
from upscaler.storage_faults import storage_fault


class StorageError(ServiceUnavailable):
    """Job storage cannot be used (wrong location, no credentials, unreachable)."""

    default_code = "storage_unavailable"


class Storage:
    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self._is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                    else (self.fs.protocol,))
        if self._is_local:  # a failure here is reported by check_usable(), clearly
            with contextlib.suppress(OSError):
                self.fs.makedirs(self.root, exist_ok=True)

    def check_usable(self) -> None:
        """Write, read back and delete a probe, so a wrong URL or missing credentials stop the
        start with one clear message instead of failing every job later."""
        key = f"probe/{uuid.uuid4().hex}"
        try:
            self.write_bytes(key, b"ok")
            if self.read_bytes(key) != b"ok":
                raise OSError("read back something else than was written")
            self.delete(key)
        except Exception as exc:
            raise StorageError(
                f"job storage {self.url} is not usable here ({type(exc).__name__}: {exc}). "
                "Set storage_url (UPSCALER_STORAGE_URL) to a location this node can write: "
                "a local folder on one machine, a bucket on a cluster.") from exc

    def path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: readers never see a half-written file."""
        final = self.path(key)
        parent = posixpath.dirname(final)
        if self._is_local:
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{final}.{uuid.uuid4().hex}.tmp"
            try:
                with self.fs.open(tmp, "wb") as f:
                    f.write(data)
                self.fs.mv(tmp, final)
            except OSError as exc:  # a full disk leaves no *.tmp behind, and says so
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                _raise_fault(exc)
                raise
        else:  # object stores make a single PUT visible atomically
            self.fs.pipe_file(final, data)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if nothing is there (True), else leave it (False); two callers
        racing on one key: exactly one wins. Local: a hard link of a complete temp file, which
        fails if the name exists. Object stores: check then write, not atomic until the
        conditional writes (``write_if(key, data, None)``) replace this."""
        final = self.path(key)
        if not self._is_local:
            if self.fs.exists(final):
                return False
            self.fs.pipe_file(final, data)
            return True
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            _raise_fault(exc)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

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

    def list_detail(self, prefix: str) -> Iterator[tuple[str, float | None, bool]]:
        """(key, modified time or None, is a folder) of each entry directly under a prefix."""
        try:
            entries = self.fs.ls(self.path(prefix), detail=True)
        except FileNotFoundError:
            return
        for entry in entries:
            modified = entry.get("mtime") or entry.get("LastModified") or entry.get("updated")
            if hasattr(modified, "timestamp"):
                modified = modified.timestamp()
            elif isinstance(modified, str):
                modified = _iso_time(modified)
            yield (posixpath.relpath(entry["name"], self.root),
                   float(modified) if modified is not None else None,
                   entry.get("type") == "directory")


def _raise_fault(exc: BaseException) -> None:
    if (fault := storage_fault(exc)) is not None and fault is not exc:
        raise fault from exc


def _iso_time(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
