"""The request path stays thin: what one synchronous ESRGAN job does to job storage (in
process), and its HTTP round trip against the bare engine call as a ratio (a real service)."""

from __future__ import annotations

import statistics
import time
from collections import Counter

import pytest
from conftest import photo, png_bytes, upload

from deployments.esrgan import esrgan_engine
from serve_app.runner import RunnerTimings
from upscaler.dimensions import calculate_output_dimensions
from upscaler.encode import encode_image
from upscaler.engines.models import ModelRegistry
from upscaler.images import decode_image
from upscaler.settings import Settings
from upscaler.storage import Storage

# The round trip of a 384x288 x4 job with a small real-format model (~0.2 s of work here) over
# the bare decode + engine + encode in this process. The fixed cost measured 35 ms on a quiet
# machine (bench/bench_esrgan.py holds the goal, 50 ms at 256 px) and 76 ms in a full CI run,
# where 256 px gave 1.81x; at this size that is about 1.4x. The bound leaves room for more.
MAX_ROUND_TRIP_RATIO = 1.8


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

    for name in ("write_bytes", "write_if", "read_bytes", "read_versioned", "open"):
        monkeypatch.setattr(Storage, name, counted(name))
    return calls


def test_a_job_writes_its_upload_record_and_result_once_and_reads_none_back(
        bare_app, storage_calls):
    """The upload is stored once (it is what a restarted job would be re-run from) and handed
    to the engine inline, not read back; the record is written when the job is accepted and
    when it ends (no write per state for a job that ends in the request); the result is
    written once, and nothing the request wrote is read back while it runs."""
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
    assert calls == {("write_bytes", "inputs"): 1, ("write_bytes", "results"): 1}


@pytest.mark.slow
def test_round_trip_over_the_bare_engine_call_is_a_small_ratio(service, upscale_models_dir):
    image = png_bytes(photo("astronaut", (384, 288)))
    plan = calculate_output_dimensions(384, 288, 4)
    settings = Settings(device="cpu", data_dir=service.data_dir)
    engine = esrgan_engine(settings, ModelRegistry(upscale_models_dir))

    def bare() -> None:
        result = engine.upscale(decode_image(image, 10**8), "tiny-compact", plan)
        encode_image(result.image, "png", plan.dpi, settings.png_compress_level,
                     png_encoder=settings.png_encoder)

    def timed(fn, repeat: int = 7) -> float:
        fn()  # warm
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with service.client() as client:
        def request() -> None:
            r = upload(client, image, model="tiny-compact", upscale_factor=4)
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text

        round_trip = timed(request)
    bare_s = timed(bare)
    ratio = round_trip / bare_s
    print(f"round trip {round_trip * 1000:.0f} ms, bare {bare_s * 1000:.0f} ms: {ratio:.2f}x")
    assert ratio <= MAX_ROUND_TRIP_RATIO
