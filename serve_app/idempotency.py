"""The ``Idempotency-Key`` header on upscale POSTs (``upscaler.domain.idempotency`` keeps the keys):
a first request claims its key before anything is admitted or stored, and records what it
answered once its job is stored; a repeat is answered from the job the first one made."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header
from fastapi.responses import JSONResponse

from serve_app.deps import Intake
from serve_app.outlook import Outlook
from serve_app.presenters import upscale_response
from upscaler.domain.idempotency import Granted, IdempotencyKeys, check_key, fingerprint
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import JobRecord
from upscaler.domain.keys import Caller
from upscaler.errors import Gone, NotFound

IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", description="Any unique string (a UUID): the same request sent "
    "again with the same key answers the same job instead of making another. 1-255 printable "
    "ASCII characters (also accepted quoted, as a structured-field string).",
    # upscaler.domain.idempotency.check_key's rule, without the edge spaces HTTP strips.
    json_schema_extra={"pattern": "^[!-~]([ -~]{0,253}[!-~])?$"})]
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass
class Claim:
    keys: IdempotencyKeys
    store: JobStore
    owner: str
    key: str
    fingerprint: str
    ttl_s: float
    taken_over: bool = False  # from a first request lost before it stored its job

    async def accepted(self, job: JobRecord, status_code: int) -> None:
        expires = job.expires_at or (job.created_at + self.ttl_s)
        await asyncio.to_thread(self.keys.accepted, self.owner, self.key, job.job_id,
                                self.fingerprint, status_code, job.created_at, expires)

    async def failed(self, job: JobRecord) -> None:
        """The first request ended in an exception: if its job was stored it runs (the key
        answers it, as 202), else the key is free again."""
        stored = await asyncio.to_thread(self.store.storage.exists,
                                         JobStore.record_key(job.job_id))
        if stored:
            await self.accepted(job, 202)
        else:
            await asyncio.to_thread(self.keys.release, self.owner, self.key)


async def claim(keys: IdempotencyKeys, store: JobStore, outlook: Outlook, who: Caller, key: str,
                route: str, request: Intake, job: JobRecord,
                ttl_s: float, wait_s: float = 0.0) -> Claim | JSONResponse:
    """Claim the key for ``job`` (a Claim), or the answer to a repeated request (``wait_s``:
    how long this request waits for its job before answering)."""
    key = check_key(key)
    fields = request.form.model_dump(mode="json", exclude={"wait"})
    owner = who.key_id or "anonymous"
    print_ = fingerprint(route, fields, request.data or b"")
    found = await asyncio.to_thread(keys.claim, owner, key, print_, job.job_id, ttl_s,
                                    wait_s)
    if isinstance(found, Granted):
        job.job_id = found.job_id  # a lost first request's id, when taken over
        return Claim(keys, store, owner, key, print_, ttl_s, found.taken_over)
    return await replayed(outlook, found.job_id, found.status_code)


async def replayed(outlook: Outlook, job_id: str, status_code: int | None) -> JSONResponse:
    """The answer to a repeat: the first request's job as it stands (``status_code``: what
    the first request answered, when it did)."""
    try:
        first = await outlook.runner.get(job_id)
    except NotFound:
        raise Gone(f"the job this Idempotency-Key made ({job_id}) is no longer kept",
                   code="job_expired") from None
    return replay_of(outlook, first, status_code)


def replay_of(outlook: Outlook, first: JobRecord, status_code: int | None) -> JSONResponse:
    response = upscale_response(first, outlook.estimate(first, outlook.open_count(first.engine)))
    with contextlib.suppress(TypeError):
        if status_code in (200, 202) and response.status_code in (200, 202):
            response.status_code = status_code  # as the first request was answered
    response.headers[REPLAYED_HEADER] = "true"
    return response
