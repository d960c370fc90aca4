"""Calls to the HTTP API as a client makes them: upload, poll, download."""

from __future__ import annotations

import io
import time

import httpx
from PIL import Image


def upload(client, data: bytes, engine: str = "esrgan", field: str = "file",
           filename: str = "photo.png", headers: dict | None = None, **fields):
    """POST an image to an upscale route as a form (fields sent as strings)."""
    return client.post(f"/api/upscale/{engine}", files={field: (filename, data, "image/png")},
                       data={k: str(v) for k, v in fields.items()}, headers=headers)


def download(client, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200, r.text
    im = Image.open(io.BytesIO(r.content))
    im.load()
    return im


def eventually(check, timeout: float = 30, every: float = 0.2) -> None:
    """Until ``check()`` is true (what a service reports a few seconds late, from a cache)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(every)


def wait_for_job(client, job_id: str, timeout: float = 300, headers: dict | None = None) -> dict:
    """Poll a job to its end; an Ingress being replaced may answer 5xx or not at all."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            r = client.get(f"/api/status/{job_id}", headers=headers)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            status = r.json()
            if status["status"] in ("completed", "failed", "cancelled"):
                return status
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish: {status}")
