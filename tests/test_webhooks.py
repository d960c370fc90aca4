"""Webhooks over the whole graph in this process, to a receiver on 127.0.0.1 (allowed by
UPSCALER_WEBHOOK_ALLOWED_HOSTS) that verifies every signature with the standardwebhooks
package: retries with backoff and Retry-After, 410 disables, redirects are not followed, every
delivery visible in the job status; the SSRF guard at submit and before each delivery."""

from __future__ import annotations

import base64
import os
import socket

import pytest
from helpers.api import eventually, upload
from helpers.config import TEST_LIMITS, WEBHOOK_SECRET, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client
from helpers.webhook_receiver import WebhookReceiver

from upscaler.domain.webhooks import AllowList, resolve_target
from upscaler.errors import InvalidRequest
from upscaler.settings import Settings

GOOD = png_bytes(photo("rocket", (24, 24)))
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
JOB = {"model": "tiny-rrdb", "upscale_factor": 2}


@pytest.fixture(scope="module")
def receiver():
    rx = WebhookReceiver(SECRET)
    yield rx
    rx.close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory, models_root):
    settings = settings_from_env(
        TEST_LIMITS, data_dir=tmp_path_factory.mktemp("webhook-data"), models_dir=models_root,
        sync_wait_s=60, device="cpu", webhook_secret=SECRET,
        webhook_allowed_hosts="127.0.0.1", webhook_backoff_s=0.1, webhook_backoff_max_s=1,
        webhook_retry_for_s=30, webhook_progress_interval_s=0)
    with local_client(settings) as client:
        yield client


def deliveries(client, job_id: str) -> list[dict]:
    return client.get(f"/api/status/{job_id}").json()["webhooks"]["deliveries"]


def settled(client, job_id: str, count: int):
    """Until the job has ``count`` deliveries, none of them pending."""
    def check() -> bool:
        found = deliveries(client, job_id)
        return len(found) == count and all(d["state"] != "pending" for d in found)
    return check


def test_signed_and_retried_until_accepted(hooked, receiver):
    """Fails twice (a 500, then a 503 with Retry-After: 1), then accepts: three attempts of
    one message, each signed afresh, all visible in the status."""
    receiver.script["/flaky"] = [(500, {}), (503, {"Retry-After": "1"})]
    r = upload(hooked, GOOD, webhook_url=receiver.url("/flaky"), **JOB)
    assert r.status_code == 200, r.text
    job_id = r.json()["jobId"]
    eventually(settled(hooked, job_id, 1), timeout=30)
    hook = hooked.get(f"/api/status/{job_id}").json()["webhooks"]
    assert hook["url"] == receiver.url("/flaky") and hook["disabled"] is False
    assert hook["events"] == ["completed", "failed", "cancelled"]  # the default
    (completed,) = hook["deliveries"]
    assert completed["event"] == "completed" and completed["state"] == "delivered"
    assert completed["attempts"] == 3 and completed["status_code"] == 204
    assert completed["last_error"] is None and completed["delivered_at"] is not None
    got = receiver.at("/flaky")
    assert len(got) == 3 and all(r.verified for r in got)
    assert len({r.headers["webhook-id"] for r in got}) == 1  # one message, retried
    assert got[2].at - got[1].at >= 0.9  # Retry-After: 1 was honoured
    assert receiver.events("/flaky") == ["job.completed"] * 3
    body = got[-1].body
    assert body["data"]["job_id"] == job_id and body["data"]["status"] == "completed"
    assert "webhooks" not in body["data"]


def test_every_event_asked_for_is_sent(hooked, receiver):
    r = upload(hooked, GOOD, webhook_url=receiver.url("/all"),
               webhook_events="started,progress,completed", **JOB)
    job_id = r.json()["jobId"]
    eventually(lambda: "job.completed" in receiver.events("/all"))
    events = receiver.events("/all")  # sent concurrently: in any order
    assert "job.started" in events and events.count("job.completed") == 1
    assert all(r.verified for r in receiver.at("/all"))
    eventually(lambda: all(d["state"] == "delivered" for d in deliveries(hooked, job_id)))


def test_410_disables_the_webhook(hooked, receiver):
    receiver.script["/gone"] = [(410, {})]
    r = upload(hooked, GOOD, webhook_url=receiver.url("/gone"),
               webhook_events="started,progress,completed", **JOB)
    job_id = r.json()["jobId"]
    eventually(lambda: hooked.get(f"/api/status/{job_id}").json()["webhooks"]["disabled"])
    eventually(lambda: all(d["state"] != "pending" for d in deliveries(hooked, job_id)))
    found = deliveries(hooked, job_id)
    seen = [(d["event"], d["state"], d["attempts"], d["status_code"], d["last_error"])
            for d in found]
    # Sent concurrently: one already on its way when the 410 came back was answered as the
    # receiver chose; none was tried again, and the rest were never sent.
    assert all(d["state"] == "disabled" or d["attempts"] == 1 for d in found), seen
    assert all(d["attempts"] <= 1 for d in found), seen
    assert 1 <= len(receiver.at("/gone")) <= sum(d["attempts"] for d in found), seen


def test_a_redirect_is_not_followed(hooked, receiver):
    receiver.script["/moved"] = [(307, {"Location": receiver.url("/elsewhere")})]
    r = upload(hooked, GOOD, webhook_url=receiver.url("/moved"), **JOB)
    job_id = r.json()["jobId"]
    eventually(settled(hooked, job_id, 1))
    (delivery,) = deliveries(hooked, job_id)
    assert delivery["state"] == "failed" and delivery["status_code"] == 307
    assert "redirects are not followed" in delivery["last_error"]
    assert receiver.at("/elsewhere") == [] and len(receiver.at("/moved")) == 1


def test_a_receiver_down_is_retried_then_given_up(tmp_path_factory, models_root):
    """Nothing listens there: attempts back off until webhook_retry_for_s, then the delivery
    is failed with the reason."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    settings = settings_from_env(
        TEST_LIMITS, data_dir=tmp_path_factory.mktemp("webhook-down"), models_dir=models_root,
        sync_wait_s=60, device="cpu", webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1",
        webhook_backoff_s=0.1, webhook_retry_for_s=1)
    with local_client(settings) as client:
        job_id = upload(client, GOOD, webhook_url=f"http://127.0.0.1:{closed}/", **JOB
                        ).json()["jobId"]
        eventually(settled(client, job_id, 1), timeout=20)
        (delivery,) = deliveries(client, job_id)
    assert delivery["state"] == "failed" and delivery["attempts"] >= 3
    assert "ConnectError" in delivery["last_error"] and "gave up" in delivery["last_error"]


@pytest.mark.parametrize("url", [
    "http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/",
    "http://[::ffff:127.0.0.1]:8080/", "http://0.0.0.0/", "http://192.168.1.1/",
    "file:///etc/passwd", "ftp://example.com/", "http://user:pw@127.0.0.1/", "not a url",
])
def test_ssrf_refused_at_submit(hooked, url):
    r = upload(hooked, GOOD, webhook_url=url, **JOB)
    assert r.status_code == 422 and r.json()["error"] == "webhook_url_refused", r.text
    assert "webhook_url refused" in r.json()["message"]


@pytest.mark.parametrize("url", [
    "http://localhost/", "http://127.0.0.1/", "http://127.1/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/", "http://169.254.169.254/",
    "http://10.0.0.1/", "http://172.16.0.1/", "http://100.64.0.1/", "http://224.0.0.1/",
    "http://[fe80::1]/", "http://[fc00::1]/", "http://[::]/", "http://240.0.0.1/",
    "https://[2002:7f00:1::]/",  # 6to4 around 127.0.0.1
])
def test_the_guard_refuses_internal_addresses(url):
    with pytest.raises(InvalidRequest) as err:
        resolve_target(url, AllowList([]))
    assert err.value.code == "webhook_url_refused"


def test_the_allow_list_names_hosts_and_networks():
    assert resolve_target("http://localhost:9/x", AllowList(["localhost"])).host == "localhost"
    assert resolve_target("http://10.1.2.3/", AllowList(["10.0.0.0/8"])).addresses == (
        "10.1.2.3",)
    with pytest.raises(InvalidRequest):  # the mapped form is not the allowed IPv4 network
        resolve_target("http://[::ffff:10.1.2.3]/", AllowList(["10.0.0.0/8"]))
    assert resolve_target("https://93.184.215.14/", AllowList([])).port == 443


def test_webhook_fields_are_checked(app, hooked):
    r = upload(app, GOOD, webhook_url="https://example.com/hook", **JOB)  # no secret there
    assert r.status_code == 422 and r.json()["error"] == "webhooks_not_configured"
    r = upload(hooked, GOOD, webhook_url="https://93.184.215.14/", webhook_events="done", **JOB)
    assert r.status_code == 422 and r.json()["error"] == "invalid_webhook_events"
    r = upload(hooked, GOOD, webhook_events="completed", **JOB)
    assert r.status_code == 422 and r.json()["error"] == "invalid_webhook_events"


@pytest.mark.slow
def test_a_running_service_delivers_signed_webhooks_once_per_key(client, service):
    """`upscaler serve` (Ray): a webhook retried once then delivered, signed with the secret
    of the API key that submitted it (not the server's); the same Idempotency-Key answers the
    same job, with no second webhook."""
    from upscaler.domain.keys import KeyStore

    (e2e,) = [k for k in KeyStore(str(service.data_dir / "keys.json")).list() if k.name == "e2e"]
    assert e2e.webhook_secret and e2e.webhook_secret != WEBHOOK_SECRET
    rx = WebhookReceiver(e2e.webhook_secret)
    try:
        rx.script["/e2e"] = [(503, {})]
        headers = {"Idempotency-Key": "e2e-webhook-1"}
        r = upload(client, GOOD, headers=headers, webhook_url=rx.url("/e2e"), wait=60, **JOB)
        assert r.status_code == 200, r.text
        job_id = r.json()["jobId"]
        eventually(settled(client, job_id, 1), timeout=60)
        (delivery,) = deliveries(client, job_id)
        assert delivery["state"] == "delivered" and delivery["attempts"] == 2
        got = rx.at("/e2e")
        assert len(got) == 2 and all(r.verified for r in got)
        assert got[-1].body["data"]["job_id"] == job_id
        again = upload(client, GOOD, headers=headers, webhook_url=rx.url("/e2e"), wait=60, **JOB)
        assert again.status_code == 200 and again.json()["jobId"] == job_id
        assert again.headers["idempotent-replayed"] == "true"
        assert len(rx.at("/e2e")) == 2
    finally:
        rx.close()


def _sender_run(tmp_path, receiver, url: str, **settings) -> dict:
    """One job's completed event through a real WebhookSender (no app around it): the
    delivery as recorded in the stored job record."""
    import asyncio

    from helpers.runner import new_job  # a plain job record

    from serve_app.webhooks import WebhookSender
    from upscaler.domain.job_store import JobStore
    from upscaler.domain.storage import Storage
    from upscaler.domain.webhooks import WebhookState

    store = JobStore(Storage(str(tmp_path / "storage")), stale_after_s=30)
    sender = WebhookSender(Settings(data_dir=tmp_path, webhook_secret=SECRET, **settings),
                           store)
    job = new_job()
    job.webhooks = WebhookState(url=url, events=["completed"])
    job.state = job.state.completed

    async def main() -> None:
        sender.start()
        try:
            sender.record(job, "completed")  # as the runner does: stored with the end, then sent
            store.save(job)
            sender.send_pending(job)
            while store.load(job.job_id).webhooks.deliveries[0].state == "pending":
                await asyncio.sleep(0.02)
        finally:
            await sender.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
    return store.load(job.job_id).webhooks.deliveries[0].model_dump()


def test_the_guard_runs_again_before_each_delivery(tmp_path, receiver):
    """A URL that passed at submit but is refused now (here: the allow-list changed) is not
    contacted; the delivery fails with the reason."""
    delivery = _sender_run(tmp_path, receiver, receiver.url("/late-check"))
    assert delivery["state"] == "failed" and "webhook_url refused" in delivery["last_error"]
    assert receiver.at("/late-check") == []


def test_the_sender_connects_to_the_checked_address(tmp_path, receiver):
    """A host name allowed by name is resolved once, checked, and its address connected to,
    with the name in Host (the receiver listens on 127.0.0.1 only)."""
    delivery = _sender_run(tmp_path, receiver, f"http://localhost:{receiver.port}/pinned",
                           webhook_allowed_hosts=["localhost"])
    assert delivery["state"] == "delivered", delivery
    (got,) = receiver.at("/pinned")
    assert got.verified and got.headers["host"] == f"localhost:{receiver.port}"
