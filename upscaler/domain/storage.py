"""Job storage behind fsspec: a local folder by default, any fsspec URL (s3://, gs://, ...) later.

Every node reaches the same location through its URL; nothing here assumes a disk shared between
processes beyond what the URL names.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, ParamSpec, TypeVar

import fsspec

from upscaler.domain import conditional
from upscaler.domain.conditional import WriteConflict
from upscaler.domain.storage_faults import storage_fault
from upscaler.errors import StorageError

__all__ = ["Storage", "StorageError", "WriteConflict"]


# Where the SDKs' transport errors come from (an endpoint down, a timeout, a 5xx after retries).
_TRANSPORT_MODULES = ("botocore", "aiobotocore", "aiohttp", "google", "requests", "urllib3")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError | FileExistsError | WriteConflict | StorageError):
        return False  # answers about the object, not the store
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.split(".")[0] in \
        _TRANSPORT_MODULES


def _outage_is_503(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Storage that cannot be reached answers 503 with what to do, not a 500; callers that
    retry (heartbeats, sweeps, a job's last save) carry on when it is back."""
    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            # A full disk is 507, a store that cannot be reached 503 (the one table in
            # upscaler.domain.storage_faults, also the HTTP layer's); other transport failures 503.
            fault = storage_fault(exc)
            if fault is not None and fault is not exc:
                raise fault from exc
            if fault is not None or not _is_outage(exc):
                raise
            storage = args[0]
            assert isinstance(storage, Storage)
            raise StorageError(
                f"job storage ({storage.url}) is not answering ({type(exc).__name__}); "
                "retry in a few seconds", retry_after=5) from exc
    return call


class Storage:
    def __init__(self, url: str, options: dict[str, Any] | None = None):
        """``options``: fsspec's storage options (an S3 endpoint, credentials ...)."""
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.root = root.rstrip("/")
        protocols = set(self.fs.protocol if isinstance(self.fs.protocol, tuple)
                        else (self.fs.protocol,))
        self._is_local = "file" in protocols
        self._is_s3 = bool(protocols & {"s3", "s3a"})
        self._is_gcs = bool(protocols & {"gs", "gcs"})
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

    @_outage_is_503
    def _ls(self, folder: str) -> list[str]:
        if not self._is_local:  # another replica may have written since: no cached listing
            self.fs.invalidate_cache(folder)
        try:
            return self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []

    def path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    @_outage_is_503
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
            finally:  # a failed write (a full disk) leaves no temp file behind
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(tmp)
        else:  # object stores make a single PUT visible atomically
            self.fs.pipe_file(final, data)

    @_outage_is_503
    def write_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """As ``write_bytes``, from a file on this machine, streamed: a big result is never
        held in memory (local: a copy then a rename; object stores: fsspec's ``put_file``,
        multipart where the store has it, visible once complete)."""
        final = self.path(key)
        if self._is_local:
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            tmp = f"{final}.{uuid.uuid4().hex}.tmp"
            try:
                self.fs.put_file(os.fspath(local_path), tmp)
                self.fs.mv(tmp, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(tmp)
        else:
            self.fs.put_file(os.fspath(local_path), final)

    @_outage_is_503
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its version token, for a later ``write_if``."""
        path = self.path(key)
        if self._is_local:
            return conditional.local_read(path)
        if self._is_s3:
            return conditional.s3_read(self.fs, path)
        if self._is_gcs:
            return conditional.gcs_read(self.fs, path)
        return conditional.generic_read(self.fs, path)

    @_outage_is_503
    def write_if(self, key: str, data: bytes, expected: str | None) -> str:
        """Write only if the object is still at version ``expected`` (None: only if it does
        not exist); raise ``WriteConflict`` otherwise. Returns the new version token."""
        path = self.path(key)
        if self._is_local:
            return conditional.local_write_if(path, data, expected)
        if self._is_s3:
            return conditional.s3_write_if(self.fs, path, data, expected)
        if self._is_gcs:
            return conditional.gcs_write_if(self.fs, path, data, expected)
        return conditional.generic_write_if(self.fs, path, data, expected)

    @_outage_is_503
    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    @_outage_is_503
    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path(key), mode)

    @_outage_is_503
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    @_outage_is_503
    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    @_outage_is_503
    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def list(self, prefix: str) -> Iterator[str]:
        """Keys (relative to the root) directly under a prefix folder."""
        for entry in self._ls(self.path(prefix)):
            if posixpath.basename(entry) != conditional.LOCK_NAME:  # not an object
                yield posixpath.relpath(entry, self.root)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if nothing is there (True), else leave it (False): of two callers
        racing on one key exactly one wins (a conditional create on every backend)."""
        try:
            self.write_if(key, data, None)
            return True
        except WriteConflict:
            return False

    @_outage_is_503
    def list_detail(self, prefix: str) -> Iterator[tuple[str, float | None, bool]]:
        """(key, modified time or None, is a folder) of each entry directly under a prefix."""
        folder = self.path(prefix)
        if not self._is_local:
            self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return iter(())
        found = []
        for entry in entries:
            if posixpath.basename(entry["name"]) == conditional.LOCK_NAME:
                continue
            modified = entry.get("mtime") or entry.get("LastModified") or entry.get("updated")
            if hasattr(modified, "timestamp"):
                modified = modified.timestamp()
            elif isinstance(modified, str):
                modified = _iso_time(modified)
            found.append((posixpath.relpath(entry["name"], self.root),
                          float(modified) if modified is not None else None,
                          entry.get("type") == "directory"))
        return iter(found)


def _iso_time(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
