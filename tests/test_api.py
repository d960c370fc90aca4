"""The HTTP API over the whole graph in this process (tests/helpers/local_graph.py): the API
contract's field names and answers, the print-size rule with a pixel target, clear 4xx for bad
input."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers.api import download, eventually, upload, wait_for_job
from helpers.bombs import png_bomb
from helpers.images import photo, png_bytes
from helpers.model_factory import DAT
from PIL import Image


def test_health_models_and_docs(app):
    health = app.get("/api/health").json()
    assert health["status"] == "healthy" and health["gpu_available"] is False
    assert health["models_loaded"] == ["esrgan", "flux", "imagen"]
    # Warmed at start-up, beside the rest of it.
    # A 45 MB model loading beside the rest of start-up: slow on a busy machine, so a long wait.
    eventually(lambda: DAT in app.get("/api/health").json()["engines"]["esrgan"][
        "models_loaded"], timeout=120)
    models = app.get("/api/models").json()["esrgan"]
    by_name = {m["name"]: m for m in models["models"]}
    assert by_name[DAT]["architecture"] == "DAT" and by_name["tiny-rrdb"]["scale"] == 4
    assert models["default"] == DAT
    assert app.get("/docs").status_code == 200
    paths = app.get("/openapi.json").json()["paths"]
    assert {"/api/upscale/esrgan", "/api/upscale/flux", "/api/upscale/imagen",
            "/api/status/{job_id}", "/api/jobs/{job_id}", "/api/results/{filename}",
            "/api/health", "/api/models"} <= set(paths)


def test_sync_answer_with_print_size_tiff(app):
    """40x40 to a 4x3 in print at 30 dpi: fills 120 px wide, 120 tall, 30 px crop advised."""
    r = upload(app, png_bytes(photo("coffee", (40, 40))), model="tiny-rrdb",
               target_width_inches=4, target_height_inches=3, target_dpi=30, output_format="tiff")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["processingTime"] > 0
    assert body["outputSize"] == {"width": 120, "height": 120}
    assert body["cropInfo"]["direction"] == "vertical" and body["cropInfo"]["amount_px"] == 30
    assert body["cropApplied"] is False
    out = download(app, body["outputUrl"])
    assert out.format == "TIFF" and out.size == (120, 120)
    assert round(out.info["dpi"][0]) == 30


def test_async_answer_then_status(app):
    r = upload(app, png_bytes(photo("rocket", (32, 24))), model="tiny-rrdb",
               headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "processing") and body["jobId"] == body["task_id"]
    assert body["estimatedTime"] > 0 and r.headers["location"] == body["statusUrl"]
    status = wait_for_job(app, body["jobId"])
    assert status["status"] == "completed" and status["progress"] == 100
    assert status["output_url"] == f"/api/results/{body['jobId']}.png"
    assert download(app, status["output_url"]).size == (128, 96)


def test_crop_applied_and_the_original_field_names(app):
    """`upscale_model` alias, `image` field name (the upload's alias), crop_to_target."""
    r = upload(app, png_bytes(photo("rocket", (40, 40))), field="image",
               upscale_model="tiny-compact", target_width_inches=4, target_height_inches=3,
               target_dpi=30, crop_to_target="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputSize"] == {"width": 120, "height": 90} and body["cropApplied"] is True
    assert download(app, body["outputUrl"]).size == (120, 90)


def test_the_original_test_clients_request(app):
    """A client sending `image`, `target_width=2000`, `target_height=1000` (pixels),
    `model`: a pixel target through the print-size rule (fill the width, crop advised)."""
    r = upload(app, png_bytes(photo("astronaut", (540, 360))), field="image",
               target_width=2000, target_height=1000, model="tiny-compact")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task_id"] and body["outputSize"] == {"width": 2000, "height": 1333}
    assert body["cropInfo"]["direction"] == "vertical" and body["cropInfo"]["amount_px"] == 333
    assert body["cropInfo"]["box"] == [0, 166, 2000, 1166]
    out = download(app, body["outputUrl"])
    assert out.size == (2000, 1333) and round(out.info["dpi"][0]) == 150
    r = upload(app, png_bytes(photo("astronaut", (540, 360))), target_width=2000,
               target_height=1000, model="tiny-compact", crop_to_target="true", target_dpi=300)
    assert r.json()["outputSize"] == {"width": 2000, "height": 1000}
    out = download(app, r.json()["outputUrl"])
    assert out.size == (2000, 1000) and round(out.info["dpi"][0]) == 300


@pytest.mark.parametrize("engine,extra", [
    ("esrgan", {"model": "tiny-rrdb"}),
    ("flux", {"upscale_model": "tiny-rrdb", "tile_size": 64, "steps": 1, "mask_blur": 4,
              "tile_padding": 8}),
    ("imagen", {}),
])
def test_pixel_target_on_every_engine(app, vertex, engine, extra):
    vertex.reset()
    r = upload(app, png_bytes(photo("coffee", (48, 32))), engine=engine, target_width=96,
               **extra)
    assert r.status_code in (200, 202), r.text
    status = wait_for_job(app, r.json()["jobId"])
    assert status["status"] == "completed", status
    assert status["output_size"] == {"width": 96, "height": 64}
    assert download(app, status["output_url"]).size == (96, 64)
    r = upload(app, png_bytes(photo("coffee", (48, 32))), engine=engine, target_width=96,
               target_height_inches=2, **extra)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"
    assert "either in pixels" in r.json()["message"] and "not both" in r.json()["message"]


def test_modes_round_trip(app):
    rgba = photo("astronaut", (24, 24)).convert("RGBA")
    rgba.putalpha(128)
    r = upload(app, png_bytes(rgba), model="tiny-rrdb", upscale_factor=2)
    out = download(app, r.json()["outputUrl"])
    assert out.mode == "RGBA" and out.size == (48, 48)
    assert abs(np.asarray(out)[..., 3].astype(int) - 128).max() <= 1
    gray16 = Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 150).astype(np.uint16))
    r = upload(app, png_bytes(gray16), model="tiny-rrdb", upscale_factor="x2")
    out = download(app, r.json()["outputUrl"])
    assert out.mode.startswith("I") and out.size == (48, 32)


GOOD = png_bytes(photo("chelsea", (32, 24)))
BAD_REQUESTS = [
    ("empty file", {"data": b""}, 400, "empty_file"),
    ("text file", {"data": b"hello, this is not an image" * 10}, 415, "unsupported_format"),
    ("png name, pdf content", {"data": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"}, 415,
     "unsupported_format"),
    ("truncated png", {"data": GOOD[: len(GOOD) // 2]}, 422, "corrupt_image"),
    ("bomb header", {"data": png_bomb(60000, 60000)}, 413, "image_too_large"),
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
    ("negative pixels", {"fields": {"target_width": -3}}, 422, "invalid_request"),
    ("pixels and inches", {"fields": {"target_width": 64, "target_width_inches": 2}}, 422,
     "invalid_request"),
    ("tile too small", {"fields": {"tile_size": 8}}, 422, "invalid_request"),
    ("gif output", {"fields": {"output_format": "gif"}}, 422, "invalid_request"),
    ("fp16 not bool", {"fields": {"use_fp16": "maybe"}}, 422, "invalid_request"),
    ("unknown model", {"fields": {"model": "4x-DoesNotExist"}}, 422, "unknown_model"),
    ("model path trick", {"fields": {"model": "../../etc/passwd"}}, 422, "unknown_model"),
    ("conflicting model fields", {"fields": {"model": "tiny-rrdb", "upscale_model": DAT}}, 422,
     "invalid_request"),
    ("no file", {"no_file": True}, 422, "missing_file"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_clear_4xx(app, case):
    _, spec, status, code = case
    if spec.get("no_file"):
        r = app.post("/api/upscale/esrgan", data={"upscale_factor": "2"})
    else:
        r = upload(app, spec.get("data", GOOD), **spec.get("fields", {}))
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and len(body["message"]) > 10


def test_upload_size_cap(app):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024)  # the cap is 2 MB here
    r = upload(app, big)
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"


@pytest.mark.parametrize("path,status", [
    ("/api/results/..%2F..%2Fetc%2Fpasswd", 404),
    ("/api/results/passwd", 400),
    ("/api/results/" + "0" * 32 + ".png", 404),
    ("/api/results/" + "0" * 32 + ".exe", 400),
    ("/api/status/not-a-job", 404),
    ("/api/status/" + "f" * 32, 404),
    ("/api/jobs/" + "f" * 32, 404),
])
def test_path_tricks_and_unknown_ids(app, path, status):
    r = app.delete(path) if path.startswith("/api/jobs/") else app.get(path)
    assert r.status_code == status
    assert "error" in r.json()


def test_healthy_after_bad_input(app):
    for case in BAD_REQUESTS[:5]:
        upload(app, case[1].get("data", GOOD))
    assert app.get("/api/health").json()["status"] == "healthy"
    r = upload(app, GOOD, model="tiny-rrdb", upscale_factor=2)
    assert r.status_code == 200 and r.json()["status"] == "completed"


def test_cancel_a_running_job(app):
    r = upload(app, png_bytes(photo("coffee", (192, 128))), model=DAT, tile_size=64, wait=0)
    job_id = r.json()["jobId"]
    deadline = time.monotonic() + 60
    while app.get(f"/api/status/{job_id}").json()["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert app.get("/api/health").json()["queue_size"] == 1
    r = app.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # DELETE on a finished job deletes its result (a cancelled one has none): same answer.
    r = app.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["result_deleted"] is False
    assert app.get(f"/api/status/{job_id}").json()["status"] == "cancelled"
    assert app.get("/api/health").json()["queue_size"] == 0


def test_missing_flux_and_imagen_setup_are_explained(bare_app):
    """Without FLUX files FLUX says what to run, without credentials Imagen says what to set;
    ESRGAN keeps working."""
    health = bare_app.get("/api/health").json()
    assert health["status"] == "healthy" and health["models_loaded"] == ["esrgan"]
    assert health["engines"]["flux"]["installed"] is False
    assert health["engines"]["imagen"]["credentials_found"] is False
    r = upload(bare_app, GOOD, engine="flux")
    assert r.status_code == 503 and r.json()["error"] == "flux_not_installed"
    assert "upscaler models pull flux" in r.json()["message"]
    r = upload(bare_app, GOOD, engine="imagen")
    assert r.status_code == 502 and r.json()["error"] == "credentials_missing"
    assert "UPSCALER_GCP_CREDENTIALS_FILE" in r.json()["message"]
    assert "roles/aiplatform.user" in r.json()["message"]
    r = upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=2)
    assert r.status_code == 200 and r.json()["status"] == "completed"
