"""Webhook sending that a receiver or a key cannot abuse, in this process against real
receivers on 127.0.0.1: a gzip bomb costs the sender a few KB, a receiver that drips its answer
is cut at the attempt's deadline and holds no sender past it (nor more than its key's share),
Retry-After is kept within the backoff's bounds, a key's pending deliveries are capped at
submit, plain http can be refused, look-ups run on their own pool with a timeout, and a revoked
key's deliveries are dropped, never signed with its secret."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from helpers.api import eventually, upload
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.hostile_receivers import HostileReceiver, peak_rss_mib, peak_rss_reset
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client
from helpers.runner import new_job
from helpers.webhook_receiver import WebhookReceiver

from serve_app.webhooks import WebhookSender
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import JobRecord, JobState
from upscaler.domain.keys import KeyStore
from upscaler.domain.storage import Storage
from upscaler.domain.webhooks import AllowList, WebhookDelivery, WebhookState, new_webhook_secret
from upscaler.domain.webhooks import resolve_target as real_resolve_target
from upscaler.errors import InvalidRequest
from upscaler.settings import Settings

SECRET = new_webhook_secret()
GOOD = png_bytes(photo("rocket", (24, 24)))
JOB = {"model": "tiny-rrdb", "upscale_factor": 2}


@pytest.fixture(scope="module")
def hostile():
    rx = HostileReceiver(drip_s=0.3)
    yield rx
    rx.close()


@pytest.fixture
def receiver():
    rx = WebhookReceiver(SECRET)
    yield rx
    rx.close()


def sender_settings(tmp_path, **fields) -> Settings:
    values = {"webhook_backoff_s": 0.2, "webhook_retry_for_s": 60, **fields}
    return Settings(data_dir=tmp_path, webhook_secret=SECRET,
                    webhook_allowed_hosts=["127.0.0.1"], **values)


class Sending:
    """A real WebhookSender on a real job store; ``send`` stores an ended job with one
    pending completed delivery to ``url`` (of ``key_id``'s) and hands it to the sender."""

    def __init__(self, tmp_path, keys: KeyStore | None = None, **fields):
        self.store = JobStore(Storage(str(tmp_path / "storage")), stale_after_s=30)
        self.sender = WebhookSender(sender_settings(tmp_path, **fields), self.store, keys)

    def send(self, url: str, key_id: str | None = None, signing: bool = False) -> str:
        job = new_job()
        job.api_key_id = key_id
        job.webhooks = WebhookState(url=url, events=["completed"],
                                    signing_key_id=key_id if signing else None)
        job.state = JobState.completed
        self.sender.record(job, "completed")
        self.store.create(job)
        self.sender.send_pending(job)
        return job.job_id

    def delivery(self, job_id: str) -> WebhookDelivery:
        record: JobRecord = self.store.load(job_id)
        assert record.webhooks is not None
        return record.webhooks.deliveries[0]

    async def until(self, check, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.02)

    def run(self, body) -> None:
        async def main() -> None:
            self.sender.start()
            try:
                await body()
            finally:
                await self.sender.stop(drain_s=0)

        asyncio.run(asyncio.wait_for(main(), 60))


def test_a_gzip_bomb_answer_costs_the_sender_a_few_kilobytes(tmp_path, hostile):
    """Three deliveries answered with 1 MB of gzip that inflates to 1 GiB each: delivered
    (a 200), and the process's peak memory grew by less than 50 MiB (today: 1 GiB and more)."""
    run = Sending(tmp_path)

    async def body() -> None:
        peak_rss_reset()
        before = peak_rss_mib()
        jobs = [run.send(hostile.url(f"/bomb{n}")) for n in range(3)]
        await run.until(lambda: all(run.delivery(j).state != "pending" for j in jobs))
        grown = peak_rss_mib() - before
        assert grown < 50, f"the sender's peak memory grew {grown:.0f} MiB"
        assert all(run.delivery(j).state == "delivered" for j in jobs)
        assert [hostile.count(f"/bomb{n}") for n in range(3)] == [1, 1, 1]

    run.run(body)


def test_a_dripping_receiver_is_cut_at_the_deadline(tmp_path, hostile):
    """One sender only: a receiver that drips its answer a byte every 0.3 s (never idle for
    a read's timeout) is cut at the attempt's 1 s deadline, and the next key's webhook goes
    out (today the drip holds the sender for good)."""
    run = Sending(tmp_path, webhook_concurrency=1, webhook_timeout_s=1, webhook_backoff_s=30)

    async def body() -> None:
        dripped = run.send(hostile.url("/drip-alone"), key_id="attacker")
        await run.until(lambda: hostile.count("/drip-alone") == 1)
        other = run.send(hostile.url("/other"), key_id="victim")
        await run.until(lambda: run.delivery(other).state == "delivered")
        cut = run.delivery(dripped)
        assert cut.state == "pending" and cut.attempts == 1  # retried later, with backoff
        assert "deadline" in (cut.last_error or ""), cut.last_error
        await run.until(lambda: hostile.dripping == 0)  # the sender hung up on it

    run.run(body)


def test_one_keys_slow_receivers_hold_only_its_share_of_the_senders(tmp_path, hostile):
    """Two senders, one each per key: a key's two dripping receivers (a long deadline) hold
    one sender; another key's webhook goes out on the other meanwhile."""
    run = Sending(tmp_path, webhook_concurrency=2, webhook_concurrency_per_key=1,
                  webhook_timeout_s=30)

    async def body() -> None:
        for n in range(2):
            run.send(hostile.url(f"/drip-share{n}"), key_id="attacker")
        await run.until(lambda: hostile.dripping == 1)
        other = run.send(hostile.url("/other-share"), key_id="victim")
        await run.until(lambda: run.delivery(other).state == "delivered")
        assert hostile.dripping == 1
        assert hostile.count("/drip-share0") + hostile.count("/drip-share1") == 1

    run.run(body)


def test_retry_after_is_kept_within_the_backoff(tmp_path, receiver):
    """`Retry-After: 0` waits the backoff (0.5 s), a day's Retry-After the longest backoff
    (1.5 s); the answer is asked for unencoded."""
    receiver.script["/clamped"] = [(500, {"Retry-After": "0"}), (503, {"Retry-After": "86400"})]
    run = Sending(tmp_path, webhook_backoff_s=0.5, webhook_backoff_max_s=1.5)

    async def body() -> None:
        job_id = run.send(receiver.url("/clamped"))
        await run.until(lambda: run.delivery(job_id).state != "pending")
        assert run.delivery(job_id).state == "delivered"

    run.run(body)
    got = receiver.at("/clamped")
    assert len(got) == 3 and all(r.verified for r in got)
    assert got[1].at - got[0].at >= 0.5  # not at once
    assert 1.0 <= got[2].at - got[1].at < 10  # the backoff, not a day
    assert all(r.headers["accept-encoding"] == "identity" for r in got)


def test_a_revoked_keys_deliveries_are_dropped_unsigned(tmp_path, receiver):
    """A key's delivery failed once (503); the key is revoked: its next attempt is dropped,
    not sent, and a delivery recorded after the revoke is never sent either."""
    keys = KeyStore(str(tmp_path / "keys.json"), reload_s=0)
    record, _ = keys.create("leaving")
    receiver.script["/revoked"] = [(503, {})]
    run = Sending(tmp_path, keys, webhook_backoff_s=0.5)

    async def body() -> None:
        first = run.send(receiver.url("/revoked"), record.key_id, signing=True)
        await run.until(lambda: run.delivery(first).attempts == 1
                        and run.delivery(first).next_attempt_at is not None)
        await asyncio.to_thread(keys.revoke, record.key_id)
        later = run.send(receiver.url("/revoked"), record.key_id, signing=True)
        for job_id in (first, later):
            await run.until(lambda j=job_id: run.delivery(j).state != "pending")
            dropped = run.delivery(job_id)
            assert dropped.state == "dropped", dropped
            assert f"API key {record.key_id} was revoked" in (dropped.last_error or "")

    run.run(body)
    assert len(receiver.at("/revoked")) == 1  # the one before the revoke
    assert keys.webhook_secret(record.key_id) is None  # nothing signs with it any more


def test_look_ups_run_on_their_own_pool_with_a_timeout(tmp_path, monkeypatch):
    """A DNS look-up that hangs is given up after webhook_dns_timeout_s (422 at submit), on
    a thread of the webhooks' own pool, not the loop's default one."""
    import upscaler.domain.webhooks as guard

    threads: list[str] = []
    release = threading.Event()

    def slow_getaddrinfo(*_args, **_kwargs):
        threads.append(threading.current_thread().name)
        release.wait(5)
        raise OSError("gave up")

    monkeypatch.setattr(guard.socket, "getaddrinfo", slow_getaddrinfo)
    sender = WebhookSender(sender_settings(tmp_path, webhook_dns_timeout_s=0.2),
                           JobStore(Storage(str(tmp_path / "s")), stale_after_s=30))

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(InvalidRequest) as err:
            await sender.resolver.check_at_submit("https://hangs.example/hook")
        assert time.monotonic() - started < 2
        assert err.value.code == "webhook_url_refused" and "longer than" in err.value.message
        release.set()
        sender.resolver.close()

    asyncio.run(main())
    assert threads and threads[0].startswith("webhook-dns")


def test_https_only_refuses_plain_http():
    with pytest.raises(InvalidRequest) as err:
        real_resolve_target("http://93.184.215.14/hook", AllowList([]), https_only=True)
    assert err.value.code == "webhook_url_refused" and "https" in err.value.message
    assert real_resolve_target("https://93.184.215.14/hook", AllowList([]),
                               https_only=True).scheme == "https"


def test_https_only_refuses_plain_http_at_submit(tmp_path, models_root):
    settings = settings_from_env(
        TEST_LIMITS, data_dir=tmp_path, models_dir=models_root, device="cpu",
        webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1", webhook_https_only=True)
    with local_client(settings) as client:
        r = upload(client, GOOD, webhook_url="http://127.0.0.1:9/hook", **JOB)
        assert r.status_code == 422 and r.json()["error"] == "webhook_url_refused", r.text
        assert "UPSCALER_WEBHOOK_HTTPS_ONLY" in r.json()["message"]
        assert list(client.graph.services.store.storage.list("jobs")) == []  # nothing stored


def test_a_keys_pending_deliveries_are_capped_at_submit(tmp_path, models_root, receiver):
    """A key with 2 deliveries pending (the cap) gets 429 for a third webhook, nothing
    stored; without a webhook it still submits, and another key's webhook is accepted."""
    admin = KeyStore(str(tmp_path / "keys.json"))
    alice, alice_key = admin.create("alice")
    _, bob_key = admin.create("bob")
    receiver.script["/busy"] = [(503, {})] * 10
    settings = settings_from_env(
        TEST_LIMITS, data_dir=tmp_path, models_dir=models_root, sync_wait_s=60, device="cpu",
        auth="keys", webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1",
        webhook_backoff_s=30, webhook_max_pending_per_key=2)
    as_alice = {"Authorization": f"Bearer {alice_key}"}
    with local_client(settings) as client:
        for _ in range(2):
            r = upload(client, GOOD, headers=as_alice, webhook_url=receiver.url("/busy"), **JOB)
            assert r.status_code == 200, r.text
        eventually(lambda: len(receiver.at("/busy")) == 2)  # each tried once: both pending
        stored = list(client.graph.services.store.storage.list("jobs"))
        r = upload(client, GOOD, headers=as_alice, webhook_url=receiver.url("/busy"), **JOB)
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too_many_pending_webhooks" and "Retry-After" in r.headers
        assert list(client.graph.services.store.storage.list("jobs")) == stored
        assert client.graph.services.webhooks.pending(alice.key_id) == 2
        r = upload(client, GOOD, headers=as_alice, **JOB)
        assert r.status_code == 200, r.text
        r = upload(client, GOOD, headers={"Authorization": f"Bearer {bob_key}"},
                   webhook_url=receiver.url("/bob"), **JOB)
        assert r.status_code == 200, r.text


def test_the_production_configs_send_webhooks_over_https_only():
    from pathlib import Path

    import yaml

    from upscaler.settings import load_settings

    repo = Path(__file__).resolve().parent.parent
    (app,) = yaml.safe_load((repo / "serve_config.yaml").read_text())["applications"]
    assert load_settings(app["args"]).webhook_https_only is True
    assert "UPSCALER_WEBHOOK_HTTPS_ONLY=true" in (repo / "docker" / "Dockerfile").read_text()
    assert Settings(_env_file=None).webhook_https_only is False  # loopback receivers, `make run`
