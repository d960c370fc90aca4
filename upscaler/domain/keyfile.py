"""The keys file at rest: owner-only, and every change a read-modify-write that no concurrent
`upscaler keys` command can undo (flock locally, a conditional write on object storage).
Design: docs/design/access.md
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import stat
import time
import uuid
from collections.abc import Callable
from typing import Any

from upscaler.domain import conditional
from upscaler.domain.conditional import WriteConflict

FILE_MODE = 0o600
FOLDER_MODE = 0o700
LOCK_TIMEOUT_S = 30.0  # a change takes milliseconds; this long is a hung process
MAX_ATTEMPTS = 50  # conditional writes lost to other writers before giving up

log = logging.getLogger("upscaler.domain.keys")


class KeyFileIO:
    """Reads and changes one keys file (a local path or an fsspec URL's object)."""

    def __init__(self, fs: Any, path: str):
        self.fs, self.path = fs, path
        protocols = set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.is_local = "file" in protocols
        self._is_s3 = bool(protocols & {"s3", "s3a"})
        self._is_gcs = bool(protocols & {"gs", "gcs"})

    def read(self) -> bytes | None:
        """The file's bytes, None when there is none yet."""
        try:
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None

    def update(self, change: Callable[[bytes | None], bytes]) -> None:
        """Replace the file with ``change(current bytes)``, atomically with respect to every
        other ``update`` (``change`` may run more than once on object storage; an exception
        from it aborts with nothing written)."""
        if self.is_local:
            self._update_local(change)
        else:
            self._update_conditional(change)

    # --- local ---------------------------------------------------------------------------
    def _update_local(self, change: Callable[[bytes | None], bytes]) -> None:
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, mode=FOLDER_MODE, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            conditional._lock(fd, LOCK_TIMEOUT_S)
            self._write_private(change(self.read()))
        finally:
            os.close(fd)  # releases the lock

    def _write_private(self, data: bytes) -> None:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def tighten(self) -> None:
        """Make an existing local keys file 0600 and its folder 0700 (files made before
        this was so, or by hand), with one log line saying what changed."""
        if not self.is_local:
            return
        changed = []
        for path, mode in ((os.path.dirname(self.path) or ".", FOLDER_MODE),
                           (self.path, FILE_MODE), (f"{self.path}.lock", FILE_MODE)):
            try:
                current = stat.S_IMODE(os.stat(path).st_mode)
                if current & 0o077:
                    os.chmod(path, current & mode)
                    changed.append(f"{path} {current:o} -> {mode:o}")
            except FileNotFoundError:
                continue
            except OSError as exc:  # not ours: say so, the operator must fix it
                log.warning("keys file: cannot make %s owner-only (%s)", path, exc)
        if changed:
            log.warning("keys file: tightened to owner-only: %s", "; ".join(changed))

    # --- object storage ------------------------------------------------------------------
    def _read_versioned(self) -> tuple[bytes, str]:
        if self._is_s3:
            return conditional.s3_read(self.fs, self.path)
        if self._is_gcs:
            return conditional.gcs_read(self.fs, self.path)
        return conditional.generic_read(self.fs, self.path)

    def _write_if(self, data: bytes, expected: str | None) -> None:
        if self._is_s3:
            conditional.s3_write_if(self.fs, self.path, data, expected)
        elif self._is_gcs:
            conditional.gcs_write_if(self.fs, self.path, data, expected)
        else:
            conditional.generic_write_if(self.fs, self.path, data, expected)

    def _update_conditional(self, change: Callable[[bytes | None], bytes]) -> None:
        for attempt in range(MAX_ATTEMPTS):
            try:
                current, token = self._read_versioned()
            except FileNotFoundError:
                current, token = None, None
            try:
                self._write_if(change(current), token)
                return
            except WriteConflict:  # another command wrote first: apply ours to its result
                time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
        raise WriteConflict(f"{self.path}: still changing after {MAX_ATTEMPTS} attempts")
