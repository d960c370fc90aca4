"""A job's life as server-sent events (``GET /api/jobs/{id}/events``), and the live status body
both that stream and ``GET /api/status/{id}`` answer. Design: docs/design/operations.md
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from serve_app.access import check_owner
from serve_app.outlook import Outlook
from serve_app.presenters import job_status
from serve_app.schemas import JobStatusResponse
from upscaler.domain.jobs import JobRecord
from upscaler.domain.keys import Caller
from upscaler.settings import Settings

TERMINAL_EVENT_ID = 200
RETRY_MS = 2000  # how soon a browser's EventSource reconnects after a cut


async def live_status(outlook: Outlook, job: JobRecord) -> JobStatusResponse:
    """The status body with what this replica knows beyond the record: the queue ahead (when
    it drives the job), the time left, and what it waits for while its engine has no replica
    (a GPU node, its start), whose time the estimate adds."""
    ahead = outlook.jobs_ahead(job)
    left = outlook.time_left(job, ahead)
    wait = None if job.state.is_terminal else await outlook.engines.engine_wait(job.engine)
    if wait is not None and left is not None:
        left = round(left + wait.seconds, 1)
    return job_status(job, queue_position=ahead, estimated_time=left,
                      status_detail=wait.reason if wait else None)


def event_id(status: JobStatusResponse) -> int:
    if status.status == "queued":
        return 99 - min(status.queue_position or 0, 98)
    if status.status == "processing":
        return 100 + min(status.progress, 99)
    return TERMINAL_EVENT_ID


def parse_last_event_id(header: str | None) -> int:
    """What the client saw last (0: nothing; an id it cannot have been sent counts as 0)."""
    try:
        value = int((header or "0").strip())
    except ValueError:
        return 0
    return value if 0 <= value <= TERMINAL_EVENT_ID else 0


def as_event(status: JobStatusResponse, first: bool) -> ServerSentEvent:
    # model_dump_json is one line: a `data:` field, not several.
    return ServerSentEvent(data=status.model_dump_json(), event=status.status,
                           id=str(event_id(status)), retry=RETRY_MS if first else None)


async def job_events(settings: Settings, outlook: Outlook, who: Caller, job_id: str,
                     last_id: int) -> AsyncIterator[ServerSentEvent]:
    """Events of one job from after ``last_id`` until its end. Cancelled (and its caller's
    slot freed) when the client goes away."""
    runner = outlook.runner
    sent, first = last_id, True
    while True:
        job = check_owner(settings, who, await runner.get(job_id))
        status = await live_status(outlook, job)
        if event_id(status) > sent:
            yield as_event(status, first)
            sent, first = event_id(status), False
        if job.state.is_terminal:
            return
        if runner.drives(job_id):
            # Woken by the runner when the job changes; the timeout covers a change made
            # between reading the record and waiting.
            await runner.changed(job_id, settings.events_poll_s)
        else:  # another replica drives it: its record in job storage
            await asyncio.sleep(settings.events_storage_poll_s)
