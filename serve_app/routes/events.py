"""GET /api/jobs/{id}/events: a job's progress as server-sent events (see serve_app/events.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from serve_app.access import CallerDep, check_owner, rate_limit
from serve_app.deps import OutlookDep, RunnerDep, SettingsDep, StreamsDep
from serve_app.events import TERMINAL_EVENT_ID, job_events, parse_last_event_id
from serve_app.openapi_docs import error_responses
from serve_app.routes.jobs import JobId

router = APIRouter(prefix="/api", tags=["jobs"], dependencies=[Depends(rate_limit)])


def stream_slot(settings: SettingsDep, streams: StreamsDep, who: CallerDep) -> Iterator[None]:
    """One of the replica's event-stream slots, held until the response has ended (the job
    ended, or the client went away)."""
    s = settings
    with streams.take(who.bucket, s.events_max_streams, s.events_max_streams_per_key):
        yield


@router.get(
    "/jobs/{job_id}/events", summary="Live progress (server-sent events)",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "Events `queued`, `processing`, then one of `completed`, "
                     "`failed`, `cancelled`; each `data:` is the body of GET /api/status/{id} "
                     "on one line, each `id:` grows, so `Last-Event-ID` resumes."},
               204: {"description": "The job ended and `Last-Event-ID` says its last event "
                     "was seen: nothing more to send (EventSource stops reconnecting)."},
               **error_responses(401, 403, 404, 429, 503)})
async def events(settings: SettingsDep, runner: RunnerDep, outlook: OutlookDep, who: CallerDep,
                 job_id: JobId,
                 _slot: Annotated[None, Depends(stream_slot)],
                 last_event_id: Annotated[str | None, Header()] = None) -> Response:
    job = check_owner(settings, who, await runner.get(job_id))
    last = parse_last_event_id(last_event_id)
    if job.state.is_terminal and last >= TERMINAL_EVENT_ID:
        return Response(status_code=204)
    return EventSourceResponse(
        job_events(settings, outlook, who, job_id, last), ping=settings.events_keepalive_s,
        ping_message_factory=lambda: ServerSentEvent(comment="keepalive"))
