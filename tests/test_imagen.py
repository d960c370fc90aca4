"""Imagen through the real google-cloud-aiplatform app, pointed at a fake Vertex AI on
127.0.0.1 (endpoint override, a service-account key generated here), from the HTTP app in this
process. No network."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from helpers.api import upload, wait_for_job
from helpers.config import VERTEX_DEADLINE_S
from helpers.images import photo, png_bytes
from PIL import Image

from upscaler.compute.engines.imagen import (
    ImagenModel,
    choose_factor,
    image_from_predictions,
    predict_request,
    request_image_bytes,
)
from upscaler.errors import UpscalerError


def post(app, data: bytes, headers=None, **fields):
    return upload(app, data, engine="imagen", headers=headers, **fields)


def test_upscale_through_vertex(app, vertex):
    vertex.reset()
    upload = png_bytes(photo("astronaut", (64, 48)))
    health = app.get("/api/health").json()["engines"]["imagen"]
    assert health["configured"] is True and health["project"] == "test-project"
    r = post(app, upload, upscale_factor="x2", target_dpi=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["outputSize"] == {"width": 128,
                                                                    "height": 96}
    out = Image.open(io.BytesIO(app.get(body["outputUrl"]).content))
    assert out.size == (128, 96) and round(out.info["dpi"][0]) == 300
    quality = body["quality"]  # one tile: no seam score, one heat-map cell
    assert quality["seam_score"] is None and quality["tiles"][0]["box"] == [0, 0, 128, 96]
    [call] = vertex.calls
    assert call["path"] == ("/v1/projects/test-project/locations/us-central1/publishers/"
                            "google/models/imagen-4.0-upscale-preview:predict")
    sent = call["body"]
    assert base64.b64decode(sent["instances"][0]["image"]["bytesBase64Encoded"]) == upload
    assert sent["parameters"]["mode"] == "upscale" and sent["parameters"]["sampleCount"] == 1
    assert sent["parameters"]["upscaleConfig"] == {"upscaleFactor": "x2"}
    # Signed by the configured service account (a self-signed JWT; no token endpoint).
    scheme, token = call["headers"]["authorization"].split()
    assert scheme == "Bearer"
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["iss"] == vertex.service_account["client_email"]


def test_print_size_picks_smallest_reaching_factor(app, vertex):
    vertex.reset()
    # 64x48 to 4x3 in at 50 dpi = 200x150: x3.125 needed, so Vertex's x4, then resampled.
    r = post(app, png_bytes(photo("coffee", (64, 48))), target_width_inches=4,
             target_height_inches=3, target_dpi=50, output_format="tiff")
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(app.get(r.json()["outputUrl"]).content))
    assert out.size == (200, 150) and round(out.info["dpi"][0]) == 50
    assert vertex.calls[0]["body"]["parameters"]["upscaleConfig"]["upscaleFactor"] == "x4"


def test_quota_error_then_success_is_retried(app, vertex):
    vertex.reset("429")
    r = post(app, png_bytes(photo("rocket", (32, 32))), upscale_factor="x2")
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert len(vertex.calls) == 2


@pytest.mark.parametrize("mode,status,code", [
    ("429", 429, "quota_exhausted"), ("500", 503, "vertex_unavailable"),
    ("slow", 504, "vertex_timeout"), ("malformed", 502, "vertex_bad_response"),
    ("empty", 422, "no_image"), ("filtered", 422, "safety_filtered"),
    ("403", 502, "vertex_permission"),
])
def test_vertex_failures_map_to_clear_errors(app, vertex, mode, status, code):
    vertex.reset(default=mode)
    start = time.monotonic()
    r = post(app, png_bytes(photo("rocket", (32, 32))), upscale_factor="x2")
    elapsed = time.monotonic() - start
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["jobId"]
    assert elapsed < VERTEX_DEADLINE_S + 6  # the deadline holds; nothing hangs
    if status == 429:
        assert int(r.headers["retry-after"]) > 0
    job = app.get(f"/api/status/{body['jobId']}").json()
    assert job["status"] == "failed" and job["error_code"] == code
    calls = len(vertex.calls)
    vertex.reset()
    assert app.get("/api/health").json()["status"] == "healthy"
    # Quota, server errors and timeouts are retried (with backoff); the rest are final.
    assert calls >= 2 if mode in ("429", "500", "slow") else calls == 1


def test_limits_refused_before_any_call(app, vertex):
    vertex.reset()
    # x3 of 1700x1200 would be 18.4 MP: over Imagen's 17 MP output.
    r = post(app, png_bytes(Image.new("RGB", (1700, 1200))), upscale_factor="x3")
    assert r.status_code == 413 and "17 MP" in r.json()["message"]
    r = post(app, png_bytes(photo("rocket", (32, 32))), upscale_factor="x3",
             model="imagegeneration@002")
    assert r.status_code == 422 and "x2, x4" in r.json()["message"]
    r = post(app, png_bytes(photo("rocket", (32, 32))), upscale_factor="x5")
    assert r.status_code == 422
    r = post(app, png_bytes(photo("rocket", (32, 32))), gcp_region="../../evil")
    assert r.status_code == 422
    assert vertex.calls == []


def test_factor_and_byte_limits():
    model = ImagenModel("m", (2, 3, 4), max_output_pixels=1_000_000, max_input_bytes=1000)
    assert choose_factor(model, 100, 100, 250, 250, None) == 3
    assert choose_factor(model, 100, 100, 200, 200, None) == 2
    with pytest.raises(UpscalerError) as err:
        choose_factor(model, 100, 100, 500, 500, None)
    assert err.value.http_status == 422 and err.value.code == "output_too_large"
    with pytest.raises(UpscalerError) as err:
        choose_factor(model, 300, 300, 900, 900, 4)
    assert err.value.http_status == 413
    with pytest.raises(UpscalerError) as err:
        request_image_bytes(png_bytes(photo("coffee", (64, 64))), "PNG", model)
    assert err.value.http_status == 413 and "at most" in err.value.message



def test_request_and_answer_are_read_without_a_client():
    """What is sent and read back needs neither google-cloud nor the network."""
    request = predict_request(b"png", 4, "m", "p", "europe-west4", add_watermark=False)
    assert request.endpoint == "projects/p/locations/europe-west4/publishers/google/models/m"
    assert base64.b64decode(request.instance["image"]["bytesBase64Encoded"]) == b"png"
    assert request.parameters["upscaleConfig"] == {"upscaleFactor": "x4"}
    assert request.parameters["addWatermark"] is False
    answer = base64.b64encode(b"image").decode()
    assert image_from_predictions([{"bytesBase64Encoded": answer}]) == b"image"
    for predictions, code in (([], "no_image"), ([{"raiFilteredReason": "x"}], "safety_filtered"),
                              ([{"bytesBase64Encoded": "!"}], "vertex_bad_response")):
        with pytest.raises(UpscalerError) as err:
            image_from_predictions(predictions)
        assert err.value.code == code

def test_an_answer_slower_than_the_wait_is_a_job_to_poll(app, vertex):
    """Imagen with `Prefer: respond-async` (or Vertex retries outlasting the wait): 202 with an
    estimate, and status polls answer 200 while the call runs. Both were 500s once (no
    estimate for Imagen), with the job running on and a retried POST paying twice."""
    vertex.reset("delay")
    r = post(app, png_bytes(photo("rocket", (32, 32))), upscale_factor="x2",
             headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "processing") and body["estimatedTime"] > 0
    polled = app.get(body["statusUrl"])
    assert polled.status_code == 200 and polled.json()["status"] in ("queued", "processing")
    status = wait_for_job(app, body["jobId"], timeout=60)
    assert status["status"] == "completed" and len(vertex.calls) == 1
