"""Conditional (compare-and-swap) writes per storage backend: ``write_if`` replaces an object
only if it is still the version the writer read, or creates it only if absent, so no write of a
job record is lost to a concurrent one. Design: docs/design/leases.md
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote

LOCK_NAME = ".write.lock"
LOCK_TIMEOUT_S = 10.0  # a write takes milliseconds; a lock held this long is a hung process


class WriteConflict(Exception):
    """The object is not the version the conditional write expected (or exists when it must
    not): re-read and try again."""


def content_token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- local files ---------------------------------------------------------------------------

def local_read(path: str) -> tuple[bytes, str]:
    with open(path, "rb") as f:
        data = f.read()
    return data, content_token(data)


def _lock(fd: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def local_write_if(path: str, data: bytes, expected: str | None) -> str:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp: str | None = f"{path}.{uuid.uuid4().hex}.tmp"
    fd: int | None = None
    try:
        # Written and synced before the lock is taken: the lock covers compare and rename
        # only (well under a millisecond), not the disk's sync.
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the record survives a machine crash, not only a process's
        fd = os.open(os.path.join(parent, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        _lock(fd, LOCK_TIMEOUT_S)
        try:
            current: str | None = local_read(path)[1]
        except FileNotFoundError:
            current = None
        if current != expected:
            raise WriteConflict(path)
        os.replace(tmp, path)
        tmp = None
        return content_token(data)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if fd is not None:
            os.close(fd)  # releases the lock


# --- S3 (s3fs) ------------------------------------------------------------------------------

def _s3_code(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and S3 error code of an s3fs/botocore failure, wherever s3fs put it."""
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            meta = response.get("ResponseMetadata", {})
            return meta.get("HTTPStatusCode"), response.get("Error", {}).get("Code")
    return None, None


def s3_read(fs: Any, path: str) -> tuple[bytes, str]:
    bucket, key, _ = fs.split_path(path)
    try:
        response = fs.call_s3("get_object", Bucket=bucket, Key=key)
    except Exception as exc:
        if _s3_code(exc)[0] == 404 or isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(path) from exc
        raise
    return _read_body(fs, response["Body"]), response["ETag"]


def _read_body(fs: Any, body: Any) -> bytes:
    from fsspec.asyn import sync

    async def read() -> bytes:
        try:
            return await body.read()
        finally:
            body.close()

    return sync(fs.loop, read)


def s3_write_if(fs: Any, path: str, data: bytes, expected: str | None) -> str:
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except Exception as exc:
        status, code = _s3_code(exc)
        # 412: the precondition failed; 409: a concurrent conditional write won (S3's
        # ConditionalRequestConflict); 404 with If-Match: the object is gone.
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict") \
                or (status == 404 and expected is not None):
            raise WriteConflict(path) from exc
        raise
    fs.invalidate_cache(path)
    return response["ETag"]


# --- GCS (gcsfs) ----------------------------------------------------------------------------

def gcs_read(fs: Any, path: str) -> tuple[bytes, str]:
    headers, data = fs.call("GET", fs.url(path))
    generation = {k.lower(): v for k, v in headers.items()}.get("x-goog-generation")
    if generation is None:  # never seen; without it no write could be conditional
        raise OSError(f"{path}: the store sent no object generation")
    return data, generation


def gcs_write_if(fs: Any, path: str, data: bytes, expected: str | None) -> str:
    """A single-request (multipart) upload with ``ifGenerationMatch``: 0 for "must not
    exist", else the generation read. GCS answers 412, which gcsfs raises as
    FileExistsError."""
    bucket, key, _ = fs.split_path(path)
    meta = json.dumps({"name": key}).encode()
    body = (b"--==0==\nContent-Type: application/json; charset=UTF-8\n\n" + meta
            + b"\n--==0==\nContent-Type: application/octet-stream\n\n" + data
            + b"\n--==0==--")
    try:
        answer = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                         uploadType="multipart", json_out=True, data=body,
                         headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                         ifGenerationMatch=expected or "0")
    except FileExistsError as exc:
        raise WriteConflict(path) from exc
    fs.invalidate_cache(path)
    return str(answer["generation"])


# --- anything else (fsspec's memory filesystem in tests) -------------------------------------

_process_lock = threading.Lock()


def generic_read(fs: Any, path: str) -> tuple[bytes, str]:
    data = fs.cat_file(path)
    return data, content_token(data)


def generic_write_if(fs: Any, path: str, data: bytes, expected: str | None) -> str:
    """Compare and write under a lock of this process: atomic among this process's writers
    only, which is all an in-memory filesystem has."""
    with _process_lock:
        try:
            current: str | None = generic_read(fs, path)[1]
        except FileNotFoundError:
            current = None
        if current != expected:
            raise WriteConflict(path)
        fs.pipe_file(path, data)
        return content_token(data)
