"""The Python client (upscaler_client): its events-stream parsing and resume, print sizes and
webhook signatures (fast), and the client against the running service (slow): one image at a
print size, a 4xx, a 429 retried after its Retry-After, cancel."""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json

import httpx
import pytest
from helpers.images import photo, png_bytes
from helpers.service import create_key
from PIL import Image
from standardwebhooks.webhooks import Webhook

from upscaler_client import (
    AsyncClient,
    Client,
    InvalidRequest,
    JobCancelled,
    NotFound,
    WebhookVerificationError,
    parse_print_size,
    verify_webhook,
)
from upscaler_client.errors import RateLimited, ServiceUnavailable, api_error

JOB = "0123456789abcdef0123456789abcdef"
# A FLUX job (the tiny test FLUX) that runs for a while on the FLUX replicas and stops at its
# next step when cancelled: the ESRGAN replica the other tests use stays free.
LONG_FLUX = {"model": "tiny-rrdb", "factor": 2, "steps": 100, "denoise": 0.5,
             "tile_size": 64, "tile_padding": 16, "mask_blur": 4}


def status_body(state: str, progress: int) -> dict:
    return {"task_id": JOB, "job_id": JOB, "status": state, "progress": progress,
            "engine": "esrgan", "output_url": f"/api/results/{JOB}.png"
            if state == "completed" else None}


def sse(events: list[tuple[str, int, str, int]], tail: str = "") -> bytes:
    """An events-stream body: (id, ..., event name, progress) with a keep-alive comment."""
    out = [": keep-alive\n\n"]
    for event_id, _, name, progress in events:
        out.append(f"id: {event_id}\nevent: {name}\ndata: "
                   f"{json.dumps(status_body(name, progress))}\n\n")
    return ("".join(out) + tail).encode()


class CannedEvents:
    """An events route that breaks its first stream after two events and resumes from
    Last-Event-ID on the second connection; the requests it saw are kept."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        headers = {"content-type": "text/event-stream"}
        if request.url.path.endswith("/events"):
            if "last-event-id" not in request.headers:
                body = sse([("1", 0, "queued", 0), ("2", 0, "processing", 40)],
                           tail="id: 3\nevent: processing\ndata: {\"trunc")  # cut mid-event
                return httpx.Response(200, headers=headers, content=body)
            assert request.headers["last-event-id"] == "2"
            return httpx.Response(200, headers=headers, content=sse(
                [("3", 0, "processing", 80), ("4", 0, "completed", 100)]))
        raise AssertionError(f"unexpected request {request.url}")


def test_events_stream_parsed_and_resumed_with_last_event_id():
    route = CannedEvents()
    updates = []
    with Client("http://upscaler.test", transport=httpx.MockTransport(route)) as client:
        job = client.wait(JOB, on_progress=updates.append)
    assert job.status == "completed" and job.output_url == f"/api/results/{JOB}.png"
    assert [(u.stage, u.progress) for u in updates] == [
        ("queued", 0), ("processing", 40), ("processing", 80), ("completed", 100)]
    assert [r.headers.get("last-event-id") for r in route.seen] == [None, "2"]
    assert route.seen[0].headers["accept"] == "text/event-stream"


def test_async_client_reads_the_same_stream():
    async def run():
        async with AsyncClient("http://upscaler.test",
                               transport=httpx.MockTransport(CannedEvents())) as client:
            return await client.wait(JOB)

    assert asyncio.run(run()).status == "completed"


def test_no_events_route_falls_back_to_polling():
    answers = iter([status_body("processing", 50), status_body("completed", 100)])

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"error": "not_found", "message": "Not Found"})
        assert request.url.path == f"/api/status/{JOB}"
        return httpx.Response(200, json=next(answers))

    with Client("http://upscaler.test", transport=httpx.MockTransport(route),
                poll_interval=0.01) as client:
        assert client.wait(JOB).status == "completed"


def test_a_retried_post_carries_the_same_idempotency_key():
    """503 with Retry-After, then a lost answer: both retried, all with one key (the service
    answers a repeat with the first request's job)."""
    posts = []

    def route(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        if len(posts) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": "engine_busy", "message": "full"})
        if len(posts) == 2:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(202, json={"jobId": JOB, "status": "queued"})

    updates = []
    with Client("http://upscaler.test", transport=httpx.MockTransport(route)) as client:
        job = client.submit(b"not sniffed here", on_progress=updates.append, factor=2)
    assert job.id == JOB and len(posts) == 3
    assert len({p.headers["idempotency-key"] for p in posts}) == 1
    assert posts[0].headers["prefer"] == "respond-async"
    assert [u.stage for u in updates].count("retrying") == 2


def test_error_bodies_become_typed_errors():
    err = api_error(422, {"error": "unknown_model", "message": "no model x", "jobId": None})
    assert isinstance(err, InvalidRequest) and err.code == "unknown_model"
    assert isinstance(api_error(429, {"error": "rate_limited", "message": "m"}, 5), RateLimited)
    assert isinstance(api_error(503, "<html>busy</html>"), ServiceUnavailable)
    assert isinstance(api_error(404, {"detail": "Not Found"}), NotFound)


@pytest.mark.parametrize(("text", "inches"), [
    ("24x16in", (24, 16)), ("24x16", (24, 16)), ("30x40cm", (11.811, 15.748)),
    ("8.5 x 11 in", (8.5, 11)), ("A4", (8.2677, 11.6929)), ("300x200mm", (11.811, 7.874))])
def test_print_sizes(text, inches):
    assert parse_print_size(text) == pytest.approx(inches, abs=1e-3)


@pytest.mark.parametrize("text", ["24in", "x16cm", "24x16ft", "0x5in", ""])
def test_bad_print_sizes_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="WIDTHxHEIGHT|positive"):
        parse_print_size(text)


def test_the_fidelity_report_of_a_status():
    from upscaler_client import Job, Quality

    body = {**status_body("completed", 100), "quality": {
        "delta_e_mean": 0.612, "delta_e_p95": 1.4, "seam_score": 1.021, "tiles_rerun": 2,
        "tile_grid": [1, 2], "tiles": [{"box": [0, 0, 64, 64], "delta_e_mean": 0.5},
                                       {"box": [64, 0, 128, 64], "delta_e_mean": 0.7}]}}
    quality = Job.from_api(body).quality
    assert isinstance(quality, Quality) and quality.seam_score == 1.021
    assert quality.tiles[1]["box"] == [64, 0, 128, 64]
    assert quality.summary() == "dE2000 0.61 (p95 1.40), seams 1.02, 2 tiles re-drawn"
    assert Job.from_api(status_body("processing", 5)).quality is None
    one = Quality.from_api({"delta_e_mean": 0.2, "delta_e_p95": 0.5, "seam_score": None})
    assert one.summary() == "dE2000 0.20 (p95 0.50)"


def test_verify_webhook():
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = json.dumps({"type": "job.completed", "data": {"jobId": JOB}})
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(now.timestamp())),
               "Webhook-Signature": Webhook(secret).sign("msg_1", now, body)}
    assert verify_webhook(body.encode(), headers, secret)["data"]["jobId"] == JOB
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace("completed", "failed"), headers, secret)
    old = now - datetime.timedelta(hours=1)
    stale = {**headers, "Webhook-Timestamp": str(int(old.timestamp())),
             "Webhook-Signature": Webhook(secret).sign("msg_1", old, body)}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, stale, secret)


# --- against the running service ------------------------------------------------------------

def _client(service, api_key: str | None = None) -> Client:
    return Client(service.url, api_key or service.api_key, poll_interval=0.2, max_retries=10)


@pytest.mark.slow
def test_upscale_to_a_print_size(service):
    updates = []
    with _client(service) as client:
        result = client.upscale(png_bytes(photo("astronaut", (64, 48))), filename="a.png",
                                model="tiny-compact", print_size="4x3in", dpi=100,
                                on_progress=updates.append)
    assert result.job.status == "completed" and result.job.size() == (400, 300)
    im = Image.open(io.BytesIO(result.data))
    assert im.size == (400, 300) and round(im.info["dpi"][0]) == 100
    stages = [u.stage for u in updates]
    assert stages[0] == "uploading" and stages[-2:] == ["completed", "downloading"]


@pytest.mark.slow
def test_api_errors_are_typed(service, tmp_path):
    with _client(service) as client:
        with pytest.raises(InvalidRequest) as err:
            client.upscale(png_bytes(photo("astronaut", (64, 48))), model="no-such-model")
        assert err.value.code == "unknown_model" and "no-such-model" in err.value.message
        with pytest.raises(NotFound):
            client.status("f" * 32)


@pytest.mark.slow
def test_429_is_retried_after_its_retry_after(service, tmp_path):
    """A key allowed one open job: the second upscale gets 429 (Retry-After 5 s) while the
    first runs, and goes through on a retry once the first has ended (cancelled here)."""
    key = create_key(service.data_dir, "one-at-a-time", "--max-open-jobs", "1")
    updates = []
    with _client(service, key) as client, _client(service, key) as other:
        first = client.submit(png_bytes(photo("astronaut", (128, 128))), "flux", **LONG_FLUX)

        def seen(update):
            updates.append(update)
            # Cancelled once it runs (a FLUX job stops at its next step).
            if update.stage == "retrying" and other.status(first.id).status == "processing":
                other.cancel(first.id)

        result = client.upscale(png_bytes(photo("astronaut", (32, 32))),
                                model="tiny-compact", on_progress=seen)
    retries = [u.message for u in updates if u.stage == "retrying"]
    assert retries and "429 too_many_open_jobs" in retries[0]
    assert result.job.status == "completed" and result.job.size() == (128, 128)


@pytest.mark.slow
def test_cancel_while_waiting(service):
    """The async client: cancelling the job an upscale waits for ends it with JobCancelled.
    (Cancelled once it runs: FLUX stops at the next step.)"""
    async def run():
        async with AsyncClient(service.url, service.api_key, poll_interval=0.2) as client:
            running, ids = asyncio.Event(), []

            def seen(update):
                if update.stage == "processing":
                    ids.append(update.job.id)
                    running.set()

            waiting = asyncio.create_task(client.upscale(
                png_bytes(photo("coffee", (128, 128))), "flux", on_progress=seen,
                **LONG_FLUX))
            await asyncio.wait_for(running.wait(), 120)
            assert (await client.cancel(ids[0])).id == ids[0]
            with pytest.raises(JobCancelled) as err:
                await waiting
            return err.value.job

    job = asyncio.run(run())
    assert job.status == "cancelled"
