"""End to end over HTTP against a real `upscaler serve` (Ray Serve on 127.0.0.1)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from conftest import DAT, METRICS_INTERVAL_MS, photo, png_bytes, psnr, wait_for_job
from PIL import Image

from serve_app.jobs import ENGINES


def upload(client, data: bytes, filename: str = "photo.png", field: str = "file", headers=None,
           **fields):
    return client.post("/api/upscale/esrgan", files={field: (filename, data, "image/png")},
                       data={k: str(v) for k, v in fields.items()}, headers=headers)


def download(client, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200, r.text
    im = Image.open(io.BytesIO(r.content))
    im.load()
    return im


def test_health_and_models(client):
    health = client.get("/api/health").json()
    assert health["status"] == "healthy"
    assert health["gpu_available"] is False and health["gpu_name"] is None
    assert health["models_loaded"] == ["esrgan"]
    assert isinstance(health["queue_size"], int)
    assert DAT in health["engines"]["esrgan"]["models_loaded"]  # warmed at start-up
    models = client.get("/api/models").json()["esrgan"]
    by_name = {m["name"]: m for m in models["models"]}
    assert by_name[DAT]["architecture"] == "DAT" and by_name[DAT]["scale"] == 4
    assert by_name["tiny-rrdb"]["architecture"] == "ESRGAN"
    assert models["default"] == DAT
    assert client.get("/docs").status_code == 200
    assert "/api/upscale/esrgan" in client.get("/openapi.json").json()["paths"]


def test_async_job_on_real_photo_beats_bicubic(client):
    """A real photo downscaled 4x, upscaled by the real DAT-light model in its replica."""
    original = photo("astronaut", (192, 192))
    small = original.resize((48, 48), Image.BICUBIC)
    r = upload(client, png_bytes(small), headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "processing") and body["jobId"] == body["task_id"]
    assert body["outputSize"] == {"width": 192, "height": 192}
    assert body["inputSize"] == {"width": 48, "height": 48}
    assert body["estimatedTime"] > 0
    assert r.headers["location"] == f"/api/status/{body['jobId']}"

    status = wait_for_job(client, body["jobId"])
    assert status["status"] == "completed", status
    assert status["progress"] == 100 and status["error"] is None
    assert status["output_url"] == f"/api/results/{body['jobId']}.png"
    assert status["processing_time"] > 0 and status["stats"]["architecture"] == "DAT"
    out = download(client, status["output_url"])
    assert out.size == (192, 192) and out.mode == "RGB"
    assert round(out.info["dpi"][0]) == 150
    reference = np.asarray(original)
    bicubic = np.asarray(small.resize((192, 192), Image.BICUBIC))
    assert psnr(np.asarray(out), reference) > psnr(bicubic, reference) + 0.5


def test_sync_answer_with_print_size_tiff(client):
    """40x40 to a 4x3 in print at 30 dpi: fills 120 px wide, 120 tall, 30 px crop advised."""
    r = upload(client, png_bytes(photo("coffee", (40, 40))), model="tiny-rrdb",
               target_width_inches=4, target_height_inches=3, target_dpi=30, output_format="tiff")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["processingTime"] > 0
    assert body["outputSize"] == {"width": 120, "height": 120}
    assert body["cropInfo"]["direction"] == "vertical" and body["cropInfo"]["amount_px"] == 30
    assert body["cropApplied"] is False
    out = download(client, body["outputUrl"])
    assert out.format == "TIFF" and out.size == (120, 120)
    assert round(out.info["dpi"][0]) == 30


def test_crop_applied_and_seed_field_names(client):
    """`upscale_model` alias, `image` field name (the seed's test script), crop_to_target."""
    r = upload(client, png_bytes(photo("rocket", (40, 40))), field="image",
               upscale_model="tiny-compact", target_width_inches=4, target_height_inches=3,
               target_dpi=30, crop_to_target="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputSize"] == {"width": 120, "height": 90} and body["cropApplied"] is True
    assert download(client, body["outputUrl"]).size == (120, 90)


def test_modes_round_trip_over_http(client):
    rgba = photo("astronaut", (24, 24)).convert("RGBA")
    rgba.putalpha(128)
    r = upload(client, png_bytes(rgba), model="tiny-rrdb", upscale_factor=2)
    out = download(client, r.json()["outputUrl"])
    assert out.mode == "RGBA" and out.size == (48, 48)
    assert abs(np.asarray(out)[..., 3].astype(int) - 128).max() <= 1
    gray16 = Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 150).astype(np.uint16))
    r = upload(client, png_bytes(gray16), model="tiny-rrdb", upscale_factor="x2")
    out = download(client, r.json()["outputUrl"])
    assert out.mode.startswith("I") and out.size == (48, 32)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (the pixel data would be gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + _chunk(b"IEND", b""))


GOOD = png_bytes(photo("chelsea", (32, 24)))
BAD_REQUESTS = [
    ("empty file", {"data": b""}, 400, "empty_file"),
    ("text file", {"data": b"hello, this is not an image" * 10}, 415, "unsupported_format"),
    ("png name, pdf content", {"data": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"}, 415,
     "unsupported_format"),
    ("truncated png", {"data": GOOD[: len(GOOD) // 2]}, 422, "corrupt_image"),
    ("bomb header", {"data": _png_bomb(60000, 60000)}, 413, "image_too_large"),
    ("over input pixel cap", {"data": png_bytes(Image.new("RGB", (2100, 2000)))}, 413,
     "image_too_large"),
    ("output over pixel cap", {"fields": {"upscale_factor": 16}, "data":
                               png_bytes(Image.new("RGB", (400, 400)))}, 422,
     "output_too_large"),
    ("factor zero", {"fields": {"upscale_factor": 0}}, 422, "invalid_request"),
    ("factor absurd", {"fields": {"upscale_factor": 1000}}, 422, "invalid_request"),
    ("factor text", {"fields": {"upscale_factor": "big"}}, 422, "invalid_request"),
    ("dpi zero", {"fields": {"target_dpi": 0}}, 422, "invalid_request"),
    ("negative inches", {"fields": {"target_width_inches": -3}}, 422, "invalid_request"),
    ("tile too small", {"fields": {"tile_size": 8}}, 422, "invalid_request"),
    ("jpeg output", {"fields": {"output_format": "jpg"}}, 422, "invalid_request"),
    ("fp16 not bool", {"fields": {"use_fp16": "maybe"}}, 422, "invalid_request"),
    ("unknown model", {"fields": {"model": "4x-DoesNotExist"}}, 422, "unknown_model"),
    ("model path trick", {"fields": {"model": "../../etc/passwd"}}, 422, "unknown_model"),
    ("conflicting model fields", {"fields": {"model": "tiny-rrdb", "upscale_model": DAT}}, 422,
     "invalid_request"),
    ("no file", {"no_file": True}, 422, "missing_file"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_clear_4xx(client, case):
    _, spec, status, code = case
    if spec.get("no_file"):
        r = client.post("/api/upscale/esrgan", data={"upscale_factor": "2"})
    else:
        r = upload(client, spec.get("data", GOOD), **spec.get("fields", {}))
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and len(body["message"]) > 10


def test_upload_size_cap(client, service):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024)  # cap is 2 MB in the test service
    r = upload(client, big)
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"


@pytest.mark.parametrize("path,status", [
    ("/api/results/..%2F..%2Fetc%2Fpasswd", 404),
    ("/api/results/../../etc/passwd", 404),
    ("/api/results/passwd", 400),
    ("/api/results/" + "0" * 32 + ".png", 404),
    ("/api/results/" + "0" * 32 + ".exe", 400),
    ("/api/status/not-a-job", 404),
    ("/api/status/" + "f" * 32, 404),
])
def test_path_tricks_and_unknown_ids(client, path, status):
    r = client.get(path)
    assert r.status_code == status
    assert "error" in r.json()


def test_prometheus_metrics_on_the_ray_endpoint(client, service):
    """Our job metrics are exported on Ray's metrics endpoint beside Serve's own."""
    r = upload(client, GOOD, model="tiny-rrdb", upscale_factor=2)
    assert r.status_code == 200
    wanted = ("ray_upscaler_jobs_total{", "ray_upscaler_model_load_seconds",
              "ray_upscaler_job_seconds_bucket", "ray_upscaler_queue_size{",
              "ray_serve_http_request_latency_ms_bucket")  # request latency, Serve's own
    text = _scrape_until(service.metrics_port, wanted)
    jobs = [ln for ln in text.splitlines() if ln.startswith("ray_upscaler_jobs_total{")]
    assert any('engine="esrgan"' in ln and 'status="completed"' in ln for ln in jobs), jobs
    assert "ray_upscaler_job_seconds_bucket" in text
    assert "ray_serve_num_http_requests" in text or "ray_serve_deployment_request_counter" in text
    # Ray drops a gauge its process has not re-reported for two export intervals; ours are
    # re-sent, so the queue gauges set at start are still there well after that.
    time.sleep(5 * METRICS_INTERVAL_MS / 1000)
    text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text
    queues = [ln for ln in text.splitlines() if ln.startswith("ray_upscaler_queue_size{")]
    assert {e for e in ENGINES if any(f'engine="{e}"' in ln for ln in queues)} == set(ENGINES)
    assert "ray_upscaler_model_load_seconds" in text


def _scrape_until(port: int, wanted: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:  # Ray exports replicas' metrics every interval
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(1)
    return text


def test_service_healthy_after_bad_input(client):
    for case in BAD_REQUESTS[:5]:
        upload(client, case[1].get("data", GOOD))
    assert client.get("/api/health").json()["status"] == "healthy"
    r = upload(client, GOOD, model="tiny-rrdb", upscale_factor=2)
    assert r.status_code == 200 and r.json()["status"] == "completed"
