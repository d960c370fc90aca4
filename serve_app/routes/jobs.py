"""A job after it was accepted: its status, cancelling it, and its result file."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from email.utils import formatdate, parsedate_to_datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse

from serve_app.access import CallerDep, check_owner, rate_limit, result_gone
from serve_app.deps import OutlookDep, QuotasDep, RunnerDep, SettingsDep, StoreDep
from serve_app.events import live_status
from serve_app.openapi_docs import error_responses
from serve_app.presenters import job_status
from serve_app.ranges import requested_range
from serve_app.runner import JobRunner
from serve_app.schema_examples import JOB_ID, STATUS_CANCELLED
from serve_app.schemas import JobStatusResponse
from upscaler.compute.images import MEDIA_TYPES
from upscaler.domain.job_store import JOB_ID_RE, JobStore
from upscaler.domain.jobs import JobRecord
from upscaler.domain.keys import Caller
from upscaler.domain.retention import delete_result, was_expired
from upscaler.errors import BadRequest, Gone, NotFound
from upscaler.settings import Settings

router = APIRouter(prefix="/api", tags=["jobs"], dependencies=[Depends(rate_limit)])
RESULT_NAME_RE = re.compile(rf"{JOB_ID_RE.pattern}\.(png|tiff|jpeg)")
CHUNK = 1024 * 1024
# The patterns are stated, not enforced here: an id that is not one is no job (404), a name
# that is not one a 400 invalid_filename, as before.
JobId = Annotated[str, Path(description="The job's id (`jobId`)", examples=[JOB_ID],
                            json_schema_extra={"pattern": f"^{JOB_ID_RE.pattern}$"})]
ResultName = Annotated[str, Path(description="As in `outputUrl`: <jobId>.png or .tiff",
                                 examples=[f"{JOB_ID}.tiff"],
                                 json_schema_extra={"pattern": f"^{RESULT_NAME_RE.pattern}$"})]


async def kept_job(settings: Settings, runner: JobRunner, store: JobStore, who: Caller,
                   job_id: str) -> JobRecord:
    """The caller's job; 410 once its retention ran out (swept or not yet), 404 if unknown."""
    try:
        job = await runner.get(job_id)
    except NotFound:
        if await asyncio.to_thread(was_expired, store, job_id):
            raise _expired(job_id) from None
        raise
    check_owner(settings, who, job)
    if job.is_expired():
        raise _expired(job_id)
    return job


def _expired(job_id: str) -> Gone:
    return Gone(f"job {job_id} ended longer ago than it is kept (result_ttl_s); its record and "
                "result were deleted", code="job_expired")


@router.get("/status/{job_id}", response_model=JobStatusResponse,
            responses=error_responses(401, 403, 404, 410, 429, 503),
            summary="Job status and progress")
async def status(settings: SettingsDep, runner: RunnerDep, store: StoreDep, outlook: OutlookDep,
                 who: CallerDep, job_id: JobId) -> JobStatusResponse:
    return await live_status(outlook, await kept_job(settings, runner, store, who, job_id))


@router.delete("/jobs/{job_id}", response_model=JobStatusResponse,
               responses={200: {"description": "Cancelled (or a finished job's result "
                                "deleted): the job's status",
                                "content": {"application/json": {"example": STATUS_CANCELLED}}},
                          **error_responses(401, 403, 404, 409, 410, 429, 503, e409={
                              "error": "not_owner", "message": "this job is run by another "
                              "ingress replica; retry the request"})},
               summary="Cancel a queued or running job; delete a finished job's result",
               description="A finished job's result is deleted and its final status answered "
               "with `result_deleted: true`; deleting again answers the same.")
async def cancel(settings: SettingsDep, runner: RunnerDep, store: StoreDep, quotas: QuotasDep,
                 who: CallerDep, job_id: JobId) -> JobStatusResponse:
    job = await kept_job(settings, runner, store, who, job_id)
    if job.state.is_terminal:
        job = await asyncio.to_thread(delete_result, store, job)
        await result_gone(quotas, job)
        return job_status(job)
    return job_status(await runner.cancel(job_id))


@router.get("/results/{filename}", summary="Download a result",
            responses={200: {"description": "The image, with its DPI (and ICC profile)",
                             "content": {"image/png": {}, "image/tiff": {},
                                         "image/jpeg": {}}},
                       206: {"description": "The part asked by `Range: bytes=a-b` (also "
                             "`a-`, `-n`; one range), with `Content-Range`; the whole file "
                             "instead when `If-Range` no longer matches the ETag",
                             "content": {"image/png": {}, "image/tiff": {},
                                         "image/jpeg": {}}},
                       304: {"description": "Unchanged (`If-None-Match` holds its ETag); "
                             "sent `Cache-Control: private, no-cache`: revalidated each use"},
                       **error_responses(400, 401, 403, 404, 410, 416, 429, 503, e400={
                           "error": "invalid_filename", "message": "result names look like "
                           "<32 hex digits>.png, .tiff or .jpeg, as given in outputUrl"})})
async def result(settings: SettingsDep, runner: RunnerDep, store: StoreDep, who: CallerDep,
                 filename: ResultName, request: Request) -> Response:
    if not RESULT_NAME_RE.fullmatch(filename):
        raise BadRequest("result names look like <32 hex digits>.png or .tiff, as given in "
                         "outputUrl", code="invalid_filename")
    try:  # a result is its job's: the same owner (keys on), the same retention
        job: JobRecord | None = await kept_job(settings, runner, store, who,
                                                      filename.split(".")[0])
    except NotFound:
        if settings.auth == "keys":
            raise NotFound(f"no result named {filename}") from None
        job = None
    if job is not None and job.result_deleted:
        raise Gone(f"the result {filename} was deleted (DELETE /api/jobs/{job.job_id})",
                   code="result_deleted")
    storage = store.storage
    key = JobStore.result_key(filename)
    try:
        size = await asyncio.to_thread(storage.size, key)
    except FileNotFoundError:
        raise NotFound(f"no result named {filename}") from None
    # Revalidated on every use (an owner check, a 410 once deleted), then 304 while unchanged.
    validators = result_validators(job, filename, size)
    if not_modified(request, validators):
        return Response(status_code=304, headers=validators)

    asked = requested_range(request.headers, size, validators)
    start, stop = asked or (0, size)

    async def body() -> AsyncIterator[bytes]:
        # Only the bytes asked are read (a seek, then chunks): a resumed download of a
        # gigapixel result costs what is left of it.
        f = await asyncio.to_thread(storage.open, key)
        try:
            if start:
                await asyncio.to_thread(f.seek, start)
            left = stop - start
            while left > 0 and (chunk := await asyncio.to_thread(f.read, min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        finally:
            f.close()

    headers = {"Content-Length": str(stop - start), "Accept-Ranges": "bytes",
               "Content-Disposition": f'inline; filename="{filename}"',
               "X-Content-Type-Options": "nosniff", **validators}
    if asked is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return StreamingResponse(body(), status_code=206 if asked is not None else 200,
                             media_type=MEDIA_TYPES[filename.rsplit(".", 1)[1]],
                             headers=headers)


def result_validators(job: JobRecord | None, filename: str, size: int) -> dict[str, str]:
    """Someone's image: no shared cache keeps it, and a browser asks again before each use
    (so a DELETE is seen at once), with an ETag for a cheap 304. A result is written once per
    run of its job: its end time and size name its version."""
    headers = {"Cache-Control": "private, no-cache"}
    finished = job.finished_at if job is not None else None
    headers["ETag"] = f'"{filename.split(".")[0]}-{int((finished or 0) * 1000)}-{size}"'
    if finished:
        headers["Last-Modified"] = formatdate(finished, usegmt=True)
    return headers


def not_modified(request: Request, validators: dict[str, str]) -> bool:
    if (tags := request.headers.get("if-none-match")) is not None:
        return tags.strip() == "*" or validators["ETag"] in (t.strip().removeprefix("W/")
                                                              for t in tags.split(","))
    since, modified = request.headers.get("if-modified-since"), validators.get("Last-Modified")
    if since is None or modified is None:
        return False
    try:
        return parsedate_to_datetime(modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
