"""GET /api/jobs/{id}/events: a job's life as server-sent events, in this process (fast) and
through a real `upscaler serve` (slow): order, ids, the status body as data, reconnects,
ownership."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest
from helpers.api import upload, wait_for_job
from helpers.images import photo, png_bytes
from helpers.model_factory import DAT
from helpers.service import create_key

from serve_app.schemas import JobStatusResponse
from upscaler.domain.keys import quota_bucket

TERMINAL = {"completed", "failed", "cancelled"}


def parse_sse(text: str) -> tuple[list[dict], list[str]]:
    """Events (event, id, data parsed as JSON) and comment lines of an event-stream body."""
    events, comments, current = [], [], {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if "data" in current:
                events.append({**current, "data": json.loads(current["data"])})
            current = {}
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            assert name not in current or name != "data", "data spans more than one line"
            current[name] = value[1:] if value.startswith(" ") else value
    return events, comments


def check_life(events: list[dict], job_id: str) -> None:
    """The order a job's events come in, and what each carries."""
    names = [e["event"] for e in events]
    assert names[-1] in TERMINAL and not TERMINAL & set(names[:-1]), names
    assert names[:-1] == sorted(names[:-1], key=["queued", "processing"].index), names
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), ids  # strictly growing
    for e in events:
        body = JobStatusResponse.model_validate(e["data"])  # the status endpoint's body
        assert body.task_id == job_id and body.status == e["event"]
    progress = [e["data"]["progress"] for e in events if e["event"] == "processing"]
    assert progress == sorted(progress)


def test_events_of_a_job_in_process(bare_app):
    r = upload(bare_app, png_bytes(photo("coffee", (96, 64))), model="tiny-rrdb", tile_size=64,
               wait=0)
    job_id = r.json()["jobId"]
    r = bare_app.get(f"/api/jobs/{job_id}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(r.text)
    check_life(events, job_id)
    last = events[-1]
    assert last["event"] == "completed" and last["id"] == "200"
    assert last["data"]["output_url"] == f"/api/results/{job_id}.png"
    assert last["data"] == bare_app.get(f"/api/status/{job_id}").json()
    assert last["data"]["tiles_done"] == last["data"]["tiles_total"] > 1
    # The completed event carries the fidelity report; the events before it have none.
    quality = last["data"]["quality"]
    assert quality["delta_e_mean"] >= 0 and quality["seam_score"] > 0
    assert len(quality["tiles"]) == quality["tile_grid"][0] * quality["tile_grid"][1] > 1
    assert all(e["data"]["quality"] is None for e in events[:-1])

    # A reconnect after the end: the terminal event once, then nothing more (204).
    r = bare_app.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "150"})
    events, _ = parse_sse(r.text)
    assert [(e["event"], e["id"]) for e in events] == [("completed", "200")]
    r = bare_app.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "200"})
    assert r.status_code == 204
    assert bare_app.get("/api/jobs/0123456789abcdef0123456789abcdef/events").status_code == 404
    assert bare_app.get("/api/jobs/nope/events").status_code == 404
    assert bare_app.graph.services.streams.in_use == 0  # every stream's slot given back


def test_streams_are_capped_per_caller_and_per_replica(bare_app):
    """Each stream holds a request slot for as long as its job runs: past a caller's cap 429,
    past the replica's 503, both with Retry-After; a slot given back is free again."""
    services = bare_app.graph.services
    s, caller = services.settings, quota_bucket(None)
    r = upload(bare_app, png_bytes(photo("coffee", (32, 32))), model="tiny-rrdb")
    url = f"/api/jobs/{r.json()['jobId']}/events"
    with ExitStack() as held:
        for _ in range(s.events_max_streams_per_key):
            held.enter_context(services.streams.take(caller, s.events_max_streams,
                                                     s.events_max_streams_per_key))
        r = bare_app.get(url)
        assert r.status_code == 429 and r.json()["error"] == "too_many_streams"
        assert int(r.headers["retry-after"]) > 0
        for i in range(s.events_max_streams - s.events_max_streams_per_key):
            held.enter_context(services.streams.take(f"other-{i}", s.events_max_streams,
                                                     s.events_max_streams_per_key))
        r = bare_app.get(url)
        assert r.status_code == 503 and r.json()["error"] == "busy"
    assert bare_app.get(url).status_code == 200 and services.streams.in_use == 0


@pytest.mark.slow
def test_events_through_the_service(service, client):
    """A real ESRGAN job: its events in order, a reconnect resumes after the last id seen,
    another key's job is not found."""
    r = upload(client, png_bytes(photo("astronaut", (96, 64))), model=DAT, tile_size=64,
               wait=0)  # two tiles
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["cache-control"] == "no-store"
        body, seen = "", []
        for chunk in stream.iter_text():
            body += chunk
            seen, _ = parse_sse(body)
            if seen:
                break  # the client goes away after the first event
    # Resume after the event seen (a fast device may have finished already: then a reconnect
    # from mid-job gets the last event once).
    ended = seen[-1]["event"] in TERMINAL
    cut = 150 if ended else int(seen[-1]["id"])
    with client.stream("GET", f"/api/jobs/{job_id}/events",
                       headers={"Last-Event-ID": str(cut)}) as stream:
        rest, _ = parse_sse(stream.read().decode())
    assert rest and all(int(e["id"]) > cut for e in rest)
    check_life(rest if ended else seen + rest, job_id)
    final = rest[-1]["data"]
    assert final["status"] == "completed" and final["progress"] == 100
    assert final["tiles_done"] == final["tiles_total"] == 2
    assert final == wait_for_job(client, job_id)

    other = create_key(service.data_dir, "events-other")
    headers = {"Authorization": f"Bearer {other}"}
    for _ in range(30):  # the service re-reads its keys file every 2 s
        r = client.get(f"/api/jobs/{job_id}/events", headers=headers)
        if r.status_code != 401:
            break
        time.sleep(0.5)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
