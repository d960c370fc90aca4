"""An ESRGAN job whose upload is decoded strip by strip (upscaler/compute/streamed_decode.py)
through the HTTP app (the graph in this process): the same result file and fidelity report as
the in-memory decode, with the upload sent along with the call or read from job storage. The
size threshold is lowered so a small photo takes the streamed path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.api import download, upload
from helpers.images import photo

from deployments import esrgan as esrgan_deployment
from serve_app import runner
from upscaler.compute import images

JOB = {"model": "tiny-compact", "tile_size": "64", "upscale_factor": "4"}


def _job(app, data: bytes) -> tuple[np.ndarray, dict]:
    r = upload(app, data, **JOB)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.asarray(download(app, body["outputUrl"])), body["quality"]


def _rgba_png() -> bytes:
    im = photo("chelsea", (120, 80)).convert("RGBA")
    im.putalpha(128)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("inline", [True, False], ids=["sent-along", "from-storage"])
def test_a_streamed_upload_gives_the_same_result(bare_app, monkeypatch, inline):
    data = _rgba_png()
    expected, quality = _job(bare_app, data)
    monkeypatch.setattr(images, "STREAMED_MIN_PIXELS", 1000)
    if not inline:  # the engine reads the upload from job storage
        monkeypatch.setattr(runner, "INLINE_UPLOAD_BYTES", 0)
    calls = []
    real = esrgan_deployment.read_input_by_strips

    def spy(storage, key, max_pixels, folder, data=None):
        image = real(storage, key, max_pixels, folder, data)
        calls.append((data is not None, type(image.rgb).__name__))
        return image

    monkeypatch.setattr(esrgan_deployment, "read_input_by_strips", spy)
    got, streamed_quality = _job(bare_app, data)
    assert calls == [(inline, "Canvas")]
    assert got.shape == expected.shape == (320, 480, 4) and np.array_equal(got, expected)
    assert streamed_quality == quality
