"""Idempotency-Key on upscale POSTs, over the whole graph in this process: a repeat answers the
first request's job (no second job), another request under the same key is refused (422), a
key whose first request is still being accepted answers 409, and keys are per API key."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client
from helpers.model_factory import DAT

from upscaler.domain.idempotency import Granted, IdempotencyKeys
from upscaler.domain.keys import KeyStore

GOOD = png_bytes(photo("rocket", (24, 24)))
SLOW = png_bytes(photo("coffee", (64, 48)))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, models_root):
    data = tmp_path_factory.mktemp("idempotency-data")
    store = KeyStore(str(data / "keys.json"))
    keys = {name: store.create(name)[1] for name in ("alice", "bob")}
    settings = settings_from_env(TEST_LIMITS, data_dir=data, models_dir=models_root,
                                 auth="keys", sync_wait_s=60, device="cpu")
    with local_client(settings) as client:
        client.keys, client.data_dir, client.settings = keys, data, settings
        yield client


def post(client, who: str, key: str | None, data: bytes = GOOD, **fields):
    headers = {"Authorization": f"Bearer {client.keys[who]}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    fields = {"model": "tiny-rrdb", "upscale_factor": "2", **fields}
    return client.post("/api/upscale/esrgan", headers=headers, data=fields,
                       files={"file": ("p.png", data, "image/png")})


def records(client) -> set[str]:
    return {p.name for p in (Path(client.data_dir) / "storage" / "jobs").glob("*.json")}


def test_a_repeat_answers_the_same_job_once(keyed):
    before = records(keyed)
    first = post(keyed, "alice", "order-1")
    assert first.status_code == 200, first.text
    again = post(keyed, "alice", "order-1")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["jobId"] == first.json()["jobId"]
    assert again.json()["outputUrl"] == first.json()["outputUrl"]
    assert len(records(keyed) - before) == 1  # one job, one engine run
    # Another caller's same key is another key: its own job.
    bobs = post(keyed, "bob", "order-1")
    assert bobs.status_code == 200 and bobs.json()["jobId"] != first.json()["jobId"]
    assert "idempotent-replayed" not in bobs.headers


def test_the_same_key_with_another_request_is_refused(keyed):
    assert post(keyed, "alice", "order-2").status_code == 200
    for change in ({"upscale_factor": "3"}, {"data": png_bytes(photo("rocket", (24, 25)))}):
        r = post(keyed, "alice", "order-2", **change)
        assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused", r.text


def test_a_key_still_being_accepted_answers_409(keyed):
    """The first request waits (synchronously) for a slow job: a repeat meanwhile gets 409;
    once it answered, the repeat gets its job, with the status code it answered."""
    first: dict = {}
    sender = threading.Thread(target=lambda: first.update(r=post(
        keyed, "alice", "slow-1", SLOW, model=DAT, upscale_factor="4")))
    sender.start()
    folder = Path(keyed.data_dir) / "storage" / "idempotency"
    deadline = time.monotonic() + 60
    while not any(json.loads(p.read_text()).get("state") == "accepting"
                  for p in folder.glob("*.json")):
        assert time.monotonic() < deadline and sender.is_alive()
        time.sleep(0.02)
    r = post(keyed, "alice", "slow-1", SLOW, model=DAT, upscale_factor="4")
    assert r.status_code == 409 and r.json()["error"] == "idempotency_key_in_use"
    assert r.headers["retry-after"]
    sender.join(120)
    assert first["r"].status_code == 200, first["r"].text
    r = post(keyed, "alice", "slow-1", SLOW, model=DAT, upscale_factor="4")
    assert r.status_code == 200 and r.json()["jobId"] == first["r"].json()["jobId"]


def test_an_async_answer_is_replayed_as_202(keyed):
    first = post(keyed, "alice", "async-1", wait="0")
    assert first.status_code == 202
    again = post(keyed, "alice", "async-1", wait="0")
    assert again.status_code == 202 and again.json()["jobId"] == first.json()["jobId"]


def test_a_request_refused_before_its_job_frees_the_key(keyed):
    r = post(keyed, "alice", "refused-1", model="no-such-model")
    assert r.status_code == 422 and r.json()["error"] == "unknown_model"
    r = post(keyed, "alice", "refused-1", upscale_factor="2")
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers


def test_a_malformed_key_is_refused_and_a_quoted_one_is_its_content(keyed):
    r = post(keyed, "alice", "x" * 256)
    assert r.status_code == 400 and r.json()["error"] == "invalid_idempotency_key"
    first = post(keyed, "alice", "quoted-1")
    again = post(keyed, "alice", '"quoted-1"')  # the draft's structured-field string
    assert again.json()["jobId"] == first.json()["jobId"]


def test_another_ingress_replica_answers_the_same_job(keyed):
    """A second Ingress (its own runner and services) on the same job storage: the key made
    on the first answers there too."""
    first = post(keyed, "alice", "across-1")
    with local_client(keyed.settings) as other:
        other.keys = keyed.keys
        again = post(other, "alice", "across-1")
        assert again.status_code == 200 and again.json()["jobId"] == first.json()["jobId"]
        assert post(other, "alice", "across-1", upscale_factor="3").status_code == 422


def test_a_first_request_lost_after_storing_its_job_is_answered_with_it(keyed):
    """Its server process killed between storing the job and recording its answer (the key
    left "accepting"): once it should have answered, the repeat gets that job, not a second
    one; before, 409 with a Retry-After of when to come back."""
    before = records(keyed)
    first = post(keyed, "alice", "lost-1", wait="0")
    assert first.status_code == 202, first.text
    folder = Path(keyed.data_dir) / "storage" / "idempotency"
    [path] = [p for p in folder.glob("*.json")
              if json.loads(p.read_text())["job_id"] == first.json()["jobId"]]
    record = json.loads(path.read_text())
    # Answered as its job stands now: 202, or 200 once it completed.
    for answer_by, expected in ((time.time() + 30, {409}), (time.time() - 1, {200, 202})):
        path.write_text(json.dumps({**record, "state": "accepting", "status_code": None,
                                    "answer_by": answer_by}))
        again = post(keyed, "alice", "lost-1", wait="0")
        assert again.status_code in expected, again.text
    assert again.json()["jobId"] == first.json()["jobId"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(records(keyed) - before) == 1


def lose_first_request(client, key: str, job_id: str) -> None:
    """The key's record as a first request leaves it when killed before storing its job:
    "accepting" job ``job_id``, its answer overdue."""
    folder = Path(client.data_dir) / "storage" / "idempotency"
    first = post(client, "alice", key, wait="0")  # the record (and fingerprint) of this request
    [path] = [p for p in folder.glob("*.json")
              if json.loads(p.read_text())["job_id"] == first.json()["jobId"]]
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "state": "accepting", "status_code": None,
                                "job_id": job_id, "answer_by": time.time() - 1}))


def test_a_first_request_lost_before_storing_its_job_has_it_made_by_the_repeat(keyed):
    """Killed between claiming its key and storing its job: the repeat makes that job, under
    the id the first claimed (not 409 until the claim times out); a further repeat gets it."""
    lost_id = uuid.uuid4().hex
    lose_first_request(keyed, "lost-before-1", lost_id)
    before = records(keyed)
    again = post(keyed, "alice", "lost-before-1", wait="0")
    assert again.status_code in (200, 202), again.text
    assert again.json()["jobId"] == lost_id and "idempotent-replayed" not in again.headers
    assert records(keyed) - before == {f"{lost_id}.json"}
    third = post(keyed, "alice", "lost-before-1", wait="0")
    assert third.json()["jobId"] == lost_id and third.headers["idempotent-replayed"] == "true"


def test_a_repeat_that_finds_the_slow_first_request_stored_first_answers_its_job(
        keyed, monkeypatch):
    """The first request was only slow: it stores the job between the repeat's look and the
    repeat's own store. The job store's create-if-absent refuses the second record; the
    repeat answers the first's job, and leaves no upload of its own behind."""
    first = post(keyed, "alice", "slow-first-1")
    assert first.status_code == 200, first.text
    stored_id = first.json()["jobId"]

    def taken_over(self, *args, **kwargs):
        return Granted(stored_id, taken_over=True)  # as if it looked before the store

    monkeypatch.setattr(IdempotencyKeys, "claim", taken_over)
    before = records(keyed)
    again = post(keyed, "alice", "slow-first-1")
    assert again.status_code == 200 and again.json()["jobId"] == stored_id, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert records(keyed) == before
    inputs = Path(keyed.data_dir) / "storage" / "inputs"
    assert not [p for p in inputs.iterdir() if p.name.startswith(stored_id)]
