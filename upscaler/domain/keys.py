"""API keys: shown once, kept only as SHA-256 hashes in one JSON file every Ingress replica
re-reads, each with its own webhook signing secret. Design: docs/design/access.md
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import fsspec
from pydantic import BaseModel, Field

from upscaler.domain.keyfile import KeyFileIO
from upscaler.domain.webhooks import new_webhook_secret
from upscaler.errors import Conflict, Forbidden, NotFound, Unauthorized

KEY_RE = re.compile(r"upk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


class KeyLimits(BaseModel):
    """Per-key overrides of the server's limits (None: the server's setting)."""

    rate_limit_per_minute: int | None = Field(None, ge=1)
    max_open_jobs: int | None = Field(None, ge=1)
    max_output_mp_per_day: float | None = Field(None, gt=0)  # megapixels computed
    max_flux_mp_steps_per_day: float | None = Field(None, gt=0)
    max_jobs_per_day: int | None = Field(None, ge=1)
    max_stored_mb: float | None = Field(None, gt=0)  # results kept, MiB
    gcp_projects: list[str] = Field(default_factory=list)
    result_ttl_s: float | None = Field(None, gt=0)  # retention of this key's jobs


class KeyRecord(BaseModel):
    key_id: str
    name: str
    sha256: str
    created_at: float
    revoked_at: float | None = None
    limits: KeyLimits = Field(default_factory=KeyLimits)
    # Kept as it is, not hashed like the key: signing needs the secret itself (an HMAC key),
    # and the Ingress signs each delivery with it. The file is the operator's only, like the
    # server's UPSCALER_WEBHOOK_SECRET. None: a key made before keys had one (the server's
    # secret signs its webhooks, if set).
    webhook_secret: str | None = None
    # An admin key sees the whole service's detail in health (every tenant's queue, the
    # Google Cloud project, storage); other keys see their own figures only.
    admin: bool = False

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class KeyFile(BaseModel):
    keys: list[KeyRecord] = Field(default_factory=list)


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key's id and limits, or anyone (``key_id`` None) when keys are off."""

    key_id: str | None
    name: str
    limits: KeyLimits
    admin: bool = False

    @property
    def bucket(self) -> str:
        return quota_bucket(self.key_id)


ANONYMOUS = Caller(None, "anonymous", KeyLimits())


def quota_bucket(key_id: str | None) -> str:
    """What a key's quotas are counted under (one bucket for everyone when keys are off)."""
    return key_id or "anonymous"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_T = TypeVar("_T")

# A new key works at once: an unknown key id re-reads the file, at most this often.
UNKNOWN_KEY_RELOAD_S = 0.2


class KeyStore:
    def __init__(self, url: str, reload_s: float = 2.0):
        self.url = url
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, KeyRecord]] | None = None
        self._file = KeyFileIO(self.fs, self.path)

    def tighten(self) -> None:
        """A local keys file made owner-only (0600, folder 0700), logged when it was not."""
        self._file.tighten()

    # --- reading -------------------------------------------------------------------------
    @staticmethod
    def _parse(raw: bytes | None) -> KeyFile:
        return KeyFile() if raw is None else KeyFile.model_validate(json.loads(raw))

    def _read(self) -> KeyFile:
        return self._parse(self._file.read())

    def records(self, fresher_than_s: float | None = None) -> dict[str, KeyRecord]:
        """Every key by id, re-read at most every ``reload_s`` seconds (or
        ``fresher_than_s``, when the caller needs newer)."""
        with self._lock:
            now = time.monotonic()
            max_age = self.reload_s if fresher_than_s is None else fresher_than_s
            if self._cached is None or now - self._cached[0] >= max_age:
                self._cached = (now, {r.key_id: r for r in self._read().keys})
            return self._cached[1]

    def _record(self, key_id: str) -> KeyRecord | None:
        """A key id not seen yet may be a key created a moment ago: the file is read again
        for it, at most every UNKNOWN_KEY_RELOAD_S (a stream of made-up keys costs no more)."""
        record = self.records().get(key_id)
        if record is None:
            record = self.records(fresher_than_s=UNKNOWN_KEY_RELOAD_S).get(key_id)
        return record

    def authenticate(self, presented: str | None) -> Caller:
        """The caller a presented key belongs to. Raises Unauthorized (no key, not a key, a
        wrong secret) or Forbidden (revoked)."""
        if not presented:
            raise Unauthorized("an API key is required: send `Authorization: Bearer <key>` or "
                               "`X-API-Key: <key>`", code="missing_api_key")
        match = KEY_RE.fullmatch(presented.strip())
        record = match and self._record(match.group(1))
        if not match or record is None or not hmac.compare_digest(
                record.sha256, _digest(match.group(2))):
            raise Unauthorized("the API key is not valid", code="invalid_api_key")
        if record.revoked:
            raise Forbidden("this API key was revoked", code="revoked_api_key")
        return Caller(record.key_id, record.name, record.limits, record.admin)

    def webhook_secret(self, key_id: str) -> str | None:
        """The key's webhook signing secret (None: the key has none, is unknown, or was
        revoked: nothing is signed with a revoked key's secret)."""
        record = self._record(key_id)
        return record.webhook_secret if record is not None and not record.revoked else None

    # --- managing (the `upscaler keys` command) ------------------------------------------
    def _change(self, edit: Callable[[KeyFile], _T]) -> _T:
        """Apply ``edit`` to the file's current keys and write them back, atomically with
        respect to every other command's change (none is ever undone)."""
        result: list[_T] = []

        def apply(raw: bytes | None) -> bytes:
            keys = self._parse(raw)
            result[:] = [edit(keys)]
            return keys.model_dump_json(indent=2).encode()

        self._file.update(apply)
        with self._lock:
            self._cached = None
        return result[0]

    def create(self, name: str, limits: KeyLimits | None = None,
               admin: bool = False) -> tuple[KeyRecord, str]:
        """A new key: its record (with its webhook secret) and the key itself (shown once,
        never stored)."""
        if not NAME_RE.fullmatch(name):
            raise ValueError("a key name is 1-64 letters, digits, spaces, '.', '_' or '-'")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        record = KeyRecord(key_id=key_id, name=name, sha256=_digest(secret),
                           created_at=time.time(), limits=limits or KeyLimits(),
                           webhook_secret=new_webhook_secret(), admin=admin)

        def add(keys: KeyFile) -> None:
            if any(r.name == name and not r.revoked for r in keys.keys):
                raise Conflict(f"a key named {name!r} exists; revoke it first or pick another "
                               "name")
            keys.keys.append(record)

        self._change(add)
        return record, f"upk_{key_id}_{secret}"

    @staticmethod
    def _active(keys: KeyFile, id_or_name: str) -> KeyRecord:
        matches = [r for r in keys.keys if id_or_name in (r.key_id, r.name) and not r.revoked]
        if not matches:
            raise NotFound(f"no active key with id or name {id_or_name!r}")
        if len(matches) > 1:
            raise Conflict(f"{id_or_name!r} names several keys; use its id")
        return matches[0]

    def revoke(self, id_or_name: str) -> KeyRecord:
        def revoke(keys: KeyFile) -> KeyRecord:
            record = self._active(keys, id_or_name)
            record.revoked_at = time.time()
            return record

        return self._change(revoke)

    def rotate_webhook_secret(self, id_or_name: str) -> KeyRecord:
        """A new webhook secret for a key (its record carries it, to be shown once): the
        deliveries signed from the service's next reload of the file on use it."""
        def rotate(keys: KeyFile) -> KeyRecord:
            record = self._active(keys, id_or_name)
            record.webhook_secret = new_webhook_secret()
            return record

        return self._change(rotate)

    def list(self) -> list[KeyRecord]:
        return self._read().keys
