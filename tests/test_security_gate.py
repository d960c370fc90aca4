"""Nobody without a key can hold the service: against the real `upscaler serve` (keys on,
behind Ray Serve's proxy), 400 connections without a key keep sending an upload's body a byte
at a time, and come back whenever answered; meanwhile a keyed health check, a keyed status and
a keyed upload each answer within 2 s (before the gate, the flood held every request slot of
the Ingress and all three got 503)."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers.images import photo, png_bytes
from helpers.slow_bodies import SlowBodies

pytestmark = pytest.mark.slow
FLOOD = 400
# A byte a second keeps each body inside the service's 2 s idle limit: alive for as long as
# its sender likes, were it read.
BYTE_EVERY_S = 1.0
ANSWER_WITHIN_S = 2.0


def timed(call) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def test_slow_keyless_bodies_leave_health_status_and_uploads_answering(service, client):
    image = png_bytes(photo("rocket", (16, 16)))
    job = client.post("/api/upscale/esrgan", files={"file": ("p.png", image, "image/png")},
                      data={"model": "tiny-rrdb"}, headers={"Prefer": "respond-async"})
    assert job.status_code in (200, 202), job.text
    job_id = job.json()["jobId"]
    with SlowBodies(service.url, FLOOD, BYTE_EVERY_S) as flood:
        deadline = time.monotonic() + 60
        while flood.opened < FLOOD and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # long enough for the bodies to have taken every slot they could
        answers = []
        for _ in range(2):
            with service.client(timeout=10) as keyed:
                for name, call in [
                        ("health", lambda c=keyed: c.get("/api/health")),
                        ("status", lambda c=keyed: c.get(f"/api/status/{job_id}")),
                        ("upload", lambda c=keyed: c.post(
                            "/api/upscale/esrgan", files={"file": ("p.png", image, "image/png")},
                            data={"model": "tiny-rrdb"}, headers={"Prefer": "respond-async"}))]:
                    try:
                        r, seconds = timed(call)
                        answers.append((name, r.status_code, round(seconds, 2)))
                    except httpx.TimeoutException:
                        answers.append((name, "timeout", 10))
            time.sleep(1)
        print(f"flood: {flood.opened} connections opened, {flood.open_now} open, answers "
              f"{dict(flood.answers)}; keyed: {answers}")
    for _name, status, seconds in answers:
        assert status in (200, 202), answers
        assert seconds < ANSWER_WITHIN_S, answers
    # Every keyless body was answered at once (401), not read: none got the service's 408.
    statuses = {answer for answer in flood.answers if answer.isdigit()}
    assert statuses == {"401"} and flood.answers["401"] >= FLOOD, flood.answers
    assert client.get("/api/health").json()["status"] == "healthy"
