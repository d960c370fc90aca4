"""Webhook deliveries survive the Ingress holding them: kept in the job record, claimed per
attempt by a conditional write, and gone on with by another replica (the runner that takes
an open job over, or the delivery sweep for an ended job) with the same webhook-id. In this
process, with a real job store on a folder and a receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from helpers.runner import FAKE_STATS, FakeEngine, new_job
from helpers.webhook_receiver import WebhookReceiver

from serve_app.runner import JobRunner, RunnerTimings
from serve_app.webhooks import WebhookSender
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import Completed, JobState, Started
from upscaler.domain.storage import Storage
from upscaler.domain.webhooks import WebhookDelivery, WebhookState, new_webhook_secret
from upscaler.settings import Settings

SECRET = new_webhook_secret()
STALE_S = 0.5
TIMINGS = RunnerTimings(heartbeat_s=0.05, stale_after_s=STALE_S, drain_s=0.2,
                        progress_save_s=0.0)


@pytest.fixture
def receiver():
    rx = WebhookReceiver(SECRET)
    yield rx
    rx.close()


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(Storage(str(tmp_path / "storage")), stale_after_s=STALE_S)


def settings(tmp_path, **fields) -> Settings:
    # A claim lasts 3 x the timeout + the lease: 1.1 s here.
    values = {"webhook_backoff_s": 0.1, "webhook_timeout_s": 0.2, "webhook_retry_for_s": 60,
              "webhook_progress_interval_s": 0, **fields}
    return Settings(data_dir=tmp_path, webhook_secret=SECRET, stale_after_s=STALE_S,
                    webhook_allowed_hosts=["127.0.0.1"], **values)


class Replica:
    """An Ingress's runner and sender on the shared store; ``die`` stops both where they are,
    writing nothing more (no hand-over, no drain), as a killed process would."""

    def __init__(self, tmp_path, store: JobStore, engine: FakeEngine | None = None):
        self.sender = WebhookSender(settings(tmp_path), store)
        self.runner = JobRunner(store, (engine or FakeEngine()).run, TIMINGS,
                                webhooks=self.sender)
        self.sender.live = self.runner.live
        self.runner.start()
        self.sender.start()

    async def die(self) -> None:
        tasks = [*self.runner._tasks.values(), *self.sender._workers]
        if self.runner._background:
            tasks.append(self.runner._background)
        for timer in self.sender._timers:
            timer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.sender._client.aclose()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.sender.stop(drain_s=0)


async def until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def delivery_of(store: JobStore, job_id: str, event: str) -> WebhookDelivery | None:
    hook = store.load(job_id).webhooks
    return next((d for d in hook.deliveries if d.event == event), None) if hook else None


def test_an_ended_jobs_pending_delivery_is_taken_over_with_its_webhook_id(
        tmp_path, store, receiver):
    """The replica that ran the job tried its completed event once (503, Retry-After: 1) and
    died; of two other replicas, one claims it once the claim runs out and delivers it: two
    attempts in all, one webhook-id, none sent twice."""
    receiver.script["/end"] = [(503, {"Retry-After": "1"})]

    async def main():
        first = Replica(tmp_path, store)
        job = new_job()
        job.webhooks = WebhookState(url=receiver.url("/end"), events=["completed"])
        await first.runner.submit(job, b"upload", wait=5)
        await until(lambda: (d := delivery_of(store, job.job_id, "completed")) is not None
                    and d.attempts == 1 and d.next_attempt_at is not None)
        await first.die()
        assert store.storage.exists(JobStore.webhooks_marker_key(job.job_id))
        others = [Replica(tmp_path, store), Replica(tmp_path, store)]
        await asyncio.sleep(0.5)  # sweeps run: the dead sender's claim still holds
        assert len(receiver.at("/end")) == 1
        await until(lambda: delivery_of(store, job.job_id, "completed").state == "delivered")
        done = delivery_of(store, job.job_id, "completed")
        assert done.attempts == 2 and done.status_code == 204
        assert done.payload is None and done.owner is None  # an ended delivery keeps neither
        await asyncio.sleep(0.5)  # more sweeps: nothing is sent again
        got = receiver.at("/end")
        assert len(got) == 2 and all(r.verified for r in got)
        assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == done.id
        assert got[1].at - got[0].at >= 2.0  # after the claim (Retry-After + 1.1 s) ran out
        assert got[0].body == got[1].body  # the same message, its timestamp too
        await until(lambda: not store.storage.exists(JobStore.webhooks_marker_key(job.job_id)))
        for replica in others:
            await replica.stop()

    run(main())


def test_an_open_jobs_pending_delivery_goes_on_with_the_runner_that_takes_it_over(
        tmp_path, store, receiver):
    """The driver dies mid-job with its started event pending (a 503); the runner that claims
    the job sends it again with the same webhook-id, then the job's end."""
    receiver.script["/open"] = [(503, {"Retry-After": "1"})]

    async def main():
        first = Replica(tmp_path, store, FakeEngine(steps=200, step_s=0.02))
        job = new_job()
        job.webhooks = WebhookState(url=receiver.url("/open"), events=["started", "completed"])
        await first.runner.submit(job, b"upload", wait=0)
        await until(lambda: (d := delivery_of(store, job.job_id, "started")) is not None
                    and d.attempts == 1)  # saved by the runner's heartbeat
        await first.die()
        second = Replica(tmp_path, store, FakeEngine(steps=2))
        await until(lambda: store.load(job.job_id).state == JobState.completed)
        await until(lambda: all(d.state == "delivered"
                                for d in store.load(job.job_id).webhooks.deliveries))
        started = delivery_of(store, job.job_id, "started")
        assert started.attempts == 2 and store.load(job.job_id).attempts == 2
        got = receiver.at("/open")
        ids = [r.headers["webhook-id"] for r in got]
        assert receiver.events("/open").count("job.started") == 2  # both verified
        assert ids.count(started.id) == 2 and len(ids) == 3  # + completed, once
        await second.stop()

    run(main())


def test_the_sweep_bounds_retries_and_sends_deliveries_kept_before_bodies_were(
        tmp_path, store, receiver):
    """A delivery past webhook_retry_for_s is failed, not sent; a pending delivery from a
    record written before deliveries kept their body is sent with one made from the job."""
    job = new_job()
    job.mark_completed(Completed("results/x.png", "x.png"))
    job.webhooks = WebhookState(url=receiver.url("/old"), events=["completed", "progress"])
    now = time.time()
    job.webhooks.deliveries = [
        WebhookDelivery(id="msg_stale", event="progress", created_at=now - 120, attempts=3,
                        last_error="the receiver answered 500", owner="dead",
                        claimed_until=now - 1, payload="{}"),
        WebhookDelivery(id="msg_legacy", event="completed", created_at=now - 5, attempts=1)]
    store.create(job)

    async def main():
        sender = WebhookSender(settings(tmp_path), store)
        sender.start()
        await sender.sweep()
        await until(lambda: not store.load(job.job_id).webhooks.pending)
        await sender.stop(drain_s=0)

    run(main())
    stale = delivery_of(store, job.job_id, "progress")
    assert stale.state == "failed" and "gave up after 3 attempt(s)" in stale.last_error
    legacy = delivery_of(store, job.job_id, "completed")
    assert legacy.state == "delivered" and legacy.attempts == 2
    (got,) = receiver.at("/old")
    assert got.verified and got.headers["webhook-id"] == "msg_legacy"
    assert got.body["type"] == "job.completed" and got.body["data"]["job_id"] == job.job_id
    assert not store.storage.exists(JobStore.webhooks_marker_key(job.job_id))


def test_a_job_cancelled_through_another_replica_sends_its_cancelled_event_once(
        tmp_path, store, receiver):
    """The cancelled event is written with the cancellation, by the replica that was asked,
    and sent from there; the driver, told at its next heartbeat, sends nothing more."""

    async def main():
        driver = Replica(tmp_path, store, FakeEngine(steps=500, step_s=0.02))
        other = Replica(tmp_path, store)
        job = new_job()
        job.webhooks = WebhookState(url=receiver.url("/cancel"), events=["cancelled"])
        await driver.runner.submit(job, b"upload", wait=0)
        await until(lambda: store.load(job.job_id).state == JobState.processing)
        await other.runner.cancel(job.job_id)
        await until(lambda: delivery_of(store, job.job_id, "cancelled") is not None
                    and delivery_of(store, job.job_id, "cancelled").state == "delivered")
        await until(lambda: not driver.runner.drives(job.job_id))
        await asyncio.sleep(0.3)
        assert receiver.events("/cancel") == ["job.cancelled"]
        for replica in (driver, other):
            await replica.stop()

    run(main())


class HeldEnd(Storage):
    """Real local storage that holds the first write of a job's end (its driver's final save,
    the record serialised already) until ``release`` is set."""

    def __init__(self, url: str):
        super().__init__(url)
        self.held, self.release = threading.Event(), threading.Event()

    def write_if(self, key: str, data: bytes, expected: str | None) -> str:
        if key.startswith("jobs/") and b'"state":"completed"' in data and not self.held.is_set():
            self.held.set()
            self.release.wait(10)
        return super().write_if(key, data, expected)


def test_an_attempts_outcome_is_kept_when_the_drivers_end_save_was_serialised_before_it(
        tmp_path, receiver):
    """The losing order (issue 22), forced: the started event, in the live record only (not
    saved yet), is sent; the job ends and its driver's final save serialises the record (that
    attempt pending, no status code) but has not written it; the answer (204) comes and the
    sender writes its outcome (the stored record has no such delivery yet); the final save
    lands. The outcome must survive: delivered, attempts 1, status 204, sent once. (It was
    lost: the delivery stayed pending, and the sweep claimed it again and, the webhook being
    disabled by then by a 410 to `completed`, ended it disabled, attempts 1, no status.)"""
    storage = HeldEnd(str(tmp_path / "storage"))
    store = JobStore(storage, stale_after_s=STALE_S)
    receiver.script["/race"] = [(204, {}), (410, {})]
    answer = receiver.holds["/race"] = threading.Event()

    async def engine(spec, data=None):
        yield Started("fake-replica")
        await until(lambda: receiver.at("/race"))  # the started attempt is on its way
        yield Completed(JobStore.result_key(spec.result_filename), spec.result_filename,
                        FAKE_STATS)

    async def main():
        sender = WebhookSender(settings(tmp_path, webhook_timeout_s=5), store)
        # No heartbeat within the test: nothing saves the live record before its end.
        runner = JobRunner(store, engine, RunnerTimings(heartbeat_s=30, stale_after_s=30),
                           webhooks=sender)
        sender.live = runner.live
        runner.start()
        sender.start()
        job = new_job()
        job.webhooks = WebhookState(url=receiver.url("/race"), events=["started", "completed"])
        await runner.submit(job, b"upload", wait=0)
        assert await asyncio.to_thread(storage.held.wait, 5)  # the end: serialised, held
        answer.set()  # the started attempt's 204 comes back now
        await until(lambda: sender.pending(None) == 0)  # its outcome written (or not)
        storage.release.set()
        await until(lambda: store.load(job.job_id).state == JobState.completed
                    and not store.load(job.job_id).webhooks.pending)
        await asyncio.sleep(0.5)  # sweeps run: nothing is claimed or sent again
        await runner.stop()
        await sender.stop(drain_s=0)
        return job.job_id

    job_id = run(main())
    hook = store.load(job_id).webhooks
    started = delivery_of(store, job_id, "started")
    seen = [(d.event, d.state, d.attempts, d.status_code) for d in hook.deliveries]
    assert (started.state, started.attempts, started.status_code) == ("delivered", 1, 204), seen
    completed = delivery_of(store, job_id, "completed")
    assert (completed.state, completed.status_code) == ("disabled", 410) and hook.disabled
    assert receiver.events("/race") == ["job.started", "job.completed"]
