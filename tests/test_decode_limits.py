"""The check decode of every upload: its memory budget is what upscaler/compute/memory.py's table
says for the upload's kind (measured by bench/bench_decode_memory.py), and it runs in a worker
process that is stopped at the decode time limit, the service staying up."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.api import upload
from helpers.images import photo, png_bytes
from helpers.processes import REPO
from PIL import Image

from serve_app.api import create_app
from upscaler.compute.budget import MemoryBudget
from upscaler.compute.decode_worker import DecodeWorkers
from upscaler.compute.images import probe_image
from upscaler.compute.memory import (
    DECODE_BYTES_PER_PIXEL,
    DECODE_BYTES_PER_PIXEL_OTHER,
    decode_bytes,
)
from upscaler.errors import InvalidImage

GOOD = png_bytes(photo("rocket", (24, 24)))


def encoded(im: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def rgba16_png(side: int) -> bytes:
    import imagecodecs

    return imagecodecs.png_encode(np.full((side, side, 4), 30000, np.uint16), level=1)


def big_jpeg() -> bytes:
    """A 2000x2000 photo as JPEG: under the test upload cap, 4 MP to decode."""
    return encoded(photo("astronaut", (2000, 2000)), "JPEG", quality=85)


def palette_with_transparency() -> bytes:
    im = Image.new("P", (30, 20))
    return encoded(im, transparency=0)


@pytest.mark.parametrize("data,key", [
    (encoded(Image.new("RGB", (40, 30))), ("RGB", 8, False)),
    (encoded(Image.new("RGBA", (40, 30))), ("RGBA", 8, True)),
    (rgba16_png(30), ("RGBA", 16, True)),
    (encoded(Image.new("L", (40, 30)), "JPEG"), ("L", 8, False)),
    (encoded(Image.new("CMYK", (40, 30)), "JPEG"), ("CMYK", 8, False)),
    (palette_with_transparency(), ("P", 8, True)),
    (encoded(Image.new("LA", (40, 30))), None),  # not in the table: the most it holds
], ids=["rgb8", "rgba8", "rgba16", "jpeg-gray", "cmyk", "palette-alpha", "gray-alpha"])
def test_the_budget_of_a_decode_is_the_tables_figure_for_its_kind(data, key):
    probe = probe_image(data, 10**8)
    per_pixel = DECODE_BYTES_PER_PIXEL[key] if key else DECODE_BYTES_PER_PIXEL_OTHER
    assert decode_bytes(probe) == probe.width * probe.height * per_pixel
    # What the Ingress counted for every kind before: 24 B/px, below each colour kind's peak.
    assert per_pixel > 24 or key == ("L", 8, False)


def test_the_table_covers_what_a_16_bit_rgba_decode_takes():
    """The costliest kind, measured as the bench measures it (a fresh process's peak RSS)."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "bench_decode_memory.py"),
                          "--side", "1000", "--cases", "png-rgba16"], cwd=REPO,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    [row] = [line for line in out.stdout.splitlines() if line.startswith("| png-rgba16 |")]
    measured = float(row.split("|")[6])
    assert out.returncode == 0, out.stdout + out.stderr  # within its budget
    assert 24 < measured <= DECODE_BYTES_PER_PIXEL[("RGBA", 16, True)]


class RecordingBudget(MemoryBudget):
    """The real budget, noting what each decode reserves."""

    def __init__(self, budget_bytes: int) -> None:
        super().__init__(budget_bytes)
        self.reserved: list[int] = []

    def reserve(self, nbytes: int):
        self.reserved.append(nbytes)
        return super().reserve(nbytes)


def app_with(bare_app, decoder: DecodeWorkers, budget: MemoryBudget | None = None,
             **settings) -> TestClient:
    """The bare graph's services with their own decoder (and budget) under an app with these
    settings; requests that would start a job are not sent to it."""
    services = bare_app.graph.services
    changed = dataclasses.replace(
        services, settings=services.settings.model_copy(update=settings), decoder=decoder,
        decode_budget=budget or MemoryBudget(services.settings.decode_budget_bytes))
    return TestClient(create_app(changed), raise_server_exceptions=False,
                      base_url="http://localhost")


def test_an_upload_reserves_its_kinds_budget(bare_app):
    budget, decoder = RecordingBudget(2**30), DecodeWorkers(1)
    client = app_with(bare_app, decoder, budget)
    try:
        data = rgba16_png(300)
        # An unknown model is refused after the check decode, before any job.
        r = upload(client, data, model="no-such-model")
        assert r.status_code == 422 and r.json()["error"] == "unknown_model", r.text
        assert budget.reserved == [300 * 300 * DECODE_BYTES_PER_PIXEL[("RGBA", 16, True)]]
    finally:
        decoder.close()


def test_a_decode_over_the_time_limit_is_refused_and_the_service_stays_up(bare_app):
    decoder = DecodeWorkers(1)
    client = app_with(bare_app, decoder, decode_timeout_s=0.005)
    try:
        r = upload(client, big_jpeg(), model="tiny-rrdb", upscale_factor=2)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "decode_too_slow"
        assert "longer than 0.005 s to decode" in body["message"]
        assert decoder.processes == []  # the worker was stopped, not left decoding
        assert client.get("/api/health").status_code == 200
        # The next decode gets a fresh worker; the service's own uploads go on.
        asyncio.run(decoder.check(GOOD, 10**6, 30))
        assert len(decoder.processes) == 1
        assert upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=2).status_code == 200
    finally:
        decoder.close()


def test_a_worker_that_died_is_replaced_and_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("UPSCALER_WEBHOOK_SECRET", "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ=")
    decoder = DecodeWorkers(1)
    try:
        asyncio.run(decoder.check(GOOD, 10**6, 30))
        [pid] = decoder.processes
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"UPSCALER_" not in environ and b"whsec_" not in environ
        os.kill(pid, signal.SIGKILL)  # the worker this test started
        asyncio.run(decoder.check(GOOD, 10**6, 30))  # answered by a fresh one
        assert decoder.processes and decoder.processes != [pid]
        with pytest.raises(InvalidImage):
            asyncio.run(decoder.check(GOOD[: len(GOOD) // 2], 10**6, 30))
    finally:
        decoder.close()
