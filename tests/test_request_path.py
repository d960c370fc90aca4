"""The request path stays thin: what one synchronous ESRGAN job does to job storage. Its
speed over the bare engine call is a goal in bench/bench_esrgan.py, not a timed test."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from helpers.api import upload
from helpers.images import photo, png_bytes

from serve_app.runner import RunnerTimings
from upscaler.domain.storage import Storage


def kind(key: str) -> str:
    return key.split("/", 1)[0] if not key.endswith(".json") else "record"


@pytest.fixture
def storage_calls(monkeypatch) -> Counter:
    """Counts the job-storage calls by kind of key (calls still go through)."""
    calls: Counter = Counter()

    def counted(name: str):
        real = getattr(Storage, name)

        def call(self, key, *args, **kwargs):
            calls[(name, kind(key))] += 1
            return real(self, key, *args, **kwargs)
        return call

    for name in ("write_bytes", "write_file", "write_if", "read_bytes", "read_versioned", "open"):
        monkeypatch.setattr(Storage, name, counted(name))
    return calls


def test_a_job_writes_its_upload_record_and_result_once_and_reads_none_back(
        bare_app, storage_calls):
    """The upload is stored once (it is what a restarted job would be re-run from) and handed
    to the engine inline, not read back; the record is written when the job is accepted and
    when it ends (no write per state for a job that ends in the request); the result is
    written once, and nothing the request wrote is read back while it runs but the record,
    once, by the engine's fence right before it writes the result (deployments/fencing.py)."""
    image = png_bytes(photo("astronaut", (64, 48)))
    started = time.monotonic()
    r = upload(bare_app, image, model="tiny-compact", upscale_factor=4)
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    calls = dict(storage_calls)
    # Accepted and ended: 2. A job that runs longer also saves its progress (at most every
    # progress_save_s) and heartbeats (every heartbeat_s): a busy machine's share.
    timings = RunnerTimings()
    allowed = 2 + int(elapsed / timings.progress_save_s) + int(elapsed / timings.heartbeat_s)
    assert 2 <= calls.pop(("write_if", "record")) <= allowed  # conditional writes
    assert calls == {("write_bytes", "inputs"): 1, ("write_file", "results"): 1,
                     ("read_versioned", "record"): 1}
