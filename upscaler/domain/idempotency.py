"""Idempotency keys: a POST sent again with the same Idempotency-Key and request answers the
first one's job; kept in job storage with a create-if-absent write. Design: docs/design/access.md
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from upscaler.domain.job_store import JobStore
from upscaler.domain.storage import Storage
from upscaler.errors import BadRequest, Conflict, InvalidRequest

PREFIX = "idempotency"
MAX_KEY_LENGTH = 255
# From a request's job stored to its answer recorded, past its wait: starting the job, one write.
ANSWER_MARGIN_S = 2.0
MAX_RETRY_AFTER_S = 5


class IdempotencyRecord(BaseModel):
    fingerprint: str  # of the request: its form fields and its upload's bytes
    job_id: str
    state: Literal["accepting", "accepted"] = "accepting"
    status_code: int | None = None  # what the first request answered
    created_at: float
    expires_at: float
    # When the first request answers at the latest once its job is stored (its synchronous
    # wait); a key still "accepting" after it, with its job stored, lost its request.
    answer_by: float | None = None


@dataclass(frozen=True)
class Granted:
    """The key is this request's, for ``job_id``: a new job's, or (``taken_over``) the id a
    first request claimed and was lost before storing. Every repeat uses that id, so the job
    store's create-if-absent lets one job exist, whichever request stores it."""

    job_id: str
    taken_over: bool = False


def check_key(value: str) -> str:
    """A key is 1-255 printable ASCII characters; the draft's form, a structured-field string
    (``"..."``), is the same key as its content."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not all(32 <= ord(c) < 127 for c in value):
        raise BadRequest("Idempotency-Key must be 1-255 printable ASCII characters (a UUID is "
                         "a good one)", code="invalid_idempotency_key")
    return value


def fingerprint(route: str, fields: dict[str, Any], data: bytes) -> str:
    """A request's identity: the route, its (validated) form fields and the upload's bytes."""
    digest = hashlib.sha256()
    digest.update(route.encode() + b"\0")
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode() + b"\0")
    digest.update(data)
    return digest.hexdigest()


class IdempotencyKeys:
    def __init__(self, storage: Storage, accepting_timeout_s: float):
        self.storage = storage
        # A first request still "accepting" after this long died on its way: its key is free.
        self.accepting_timeout_s = accepting_timeout_s

    @staticmethod
    def storage_key(owner: str, key: str) -> str:
        digest = hashlib.sha256(owner.encode() + b"\0" + key.encode()).hexdigest()
        return f"{PREFIX}/{digest}.json"

    def claim(self, owner: str, key: str, request_fingerprint: str, job_id: str,
              ttl_s: float, wait_s: float = 0.0) -> Granted | IdempotencyRecord:
        """Take the key (Granted), or return what the first request recorded. Raises 422
        when the key came with another request, 409 while that one is accepted. ``wait_s``:
        how long this request waits for its job before it answers.

        A first request lost once its answer is overdue (its server process killed) is
        answered with the job it stored; lost before storing one, the repeat makes that job,
        under the id the first claimed: never a second job."""
        now = time.time()
        new = IdempotencyRecord(fingerprint=request_fingerprint, job_id=job_id,
                                created_at=now, expires_at=now + ttl_s,
                                answer_by=now + wait_s + ANSWER_MARGIN_S)
        path = self.storage_key(owner, key)
        for _ in range(2):
            if self.storage.create_if_absent(path, new.model_dump_json().encode()):
                return Granted(job_id)
            found = self._read(path)
            if found is None or found.expires_at <= now or (
                    found.state == "accepting"
                    and now - found.created_at > self.accepting_timeout_s):
                self.storage.delete(path)  # expired or abandoned: the key is free again
                continue
            if found.fingerprint != request_fingerprint:
                raise InvalidRequest(
                    "this Idempotency-Key was used with another request; use a new key for a "
                    "new request", code="idempotency_key_reused")
            if found.state == "accepting":
                if found.answer_by is not None and now > found.answer_by:
                    if self.storage.exists(JobStore.record_key(found.job_id)):
                        return found  # its job is stored and it should have answered: lost
                    # Lost before storing its job (or only slow: then one of the two gets a
                    # conflict when it stores the job, and answers the other's).
                    taken = new.model_copy(update={"job_id": found.job_id})
                    self.storage.write_bytes(path, taken.model_dump_json().encode())
                    return Granted(found.job_id, taken_over=True)
                wait = (found.answer_by or now) - now
                raise Conflict("the first request with this Idempotency-Key is still being "
                               "accepted; retry shortly", code="idempotency_key_in_use",
                               retry_after=max(1, min(math.ceil(wait), MAX_RETRY_AFTER_S)))
            return found
        raise Conflict("this Idempotency-Key is contended; retry shortly",
                       code="idempotency_key_in_use", retry_after=1)

    def accepted(self, owner: str, key: str, record_job_id: str, request_fingerprint: str,
                 status_code: int, created_at: float, expires_at: float) -> None:
        record = IdempotencyRecord(fingerprint=request_fingerprint, job_id=record_job_id,
                                   state="accepted", status_code=status_code,
                                   created_at=created_at, expires_at=expires_at)
        self.storage.write_bytes(self.storage_key(owner, key), record.model_dump_json().encode())

    def release(self, owner: str, key: str) -> None:
        """The first request failed before its job was stored: the key may be used again."""
        self.storage.delete(self.storage_key(owner, key))

    def _read(self, path: str) -> IdempotencyRecord | None:
        try:
            return IdempotencyRecord.model_validate_json(self.storage.read_bytes(path))
        except (FileNotFoundError, ValidationError):
            return None
