"""The JSON of the answers built from what crosses the engine handles (health, models, each
engine's job stats), field for field: typed contracts behind them must not rename, add or drop
a field (backends read them). The same file passes against the code before the contracts."""

from __future__ import annotations

import pytest
from helpers.api import eventually, upload, wait_for_job
from helpers.images import photo, png_bytes

GPU = {"gpu_available", "gpu_name", "gpu_memory_free", "gpu_memory_total"}
ESRGAN_STATUS = GPU | {"device", "models_loaded", "busy_jobs", "completed_jobs",
                       "superseded_jobs", "replica"}
FLUX_STATUS = {"installed", "replica", "tiles_done", "device", "dtype", "memory_mode"}
FLUX_MISSING = {"installed", "replica", "tiles_done", "message"}
IMAGEN_STATUS = {"credentials_found", "credentials_source", "project", "configured", "model",
                 "region", "api_endpoint", "calls"}
HEALTH = {"status", "gpu_available", "gpu_name", "gpu_memory_free", "models_loaded",
          "queue_size", "engines", "scope"}
MODEL = {"name", "architecture", "scale", "input_channels", "output_channels",
         "supports_half", "supports_bfloat16", "size_bytes", "file"}
OUTPUT = {"encode_seconds", "output_bytes", "quality_seconds"}
ESRGAN_STATS = OUTPUT | {"model", "architecture", "model_scale", "passes", "pass_input",
                         "computed_pixels", "tile_size", "context", "tiles", "oom_retries",
                         "device", "dtype", "model_seconds", "engine_seconds", "replica"}
FLUX_STATS = OUTPUT | {"tiles", "tiles_computed", "tiles_resumed", "replicas", "tile_log",
                       "timeline", "seconds"}
TILE_LOG = {"replica", "seconds", "started_at", "finished_at", "tile", "sent", "returned",
            "stored", "delta_e", "attempts"}
IMAGEN_STATS = OUTPUT | {"model", "vertex_factor", "vertex_output", "vertex_seconds", "device"}


def answering(client) -> dict:
    """The health answer once every engine has answered (a busy machine's first status can
    take longer than the gateway waits)."""
    eventually(lambda: not any("error" in e for e in client.get("/api/health").json()[
        "engines"].values()), timeout=60)
    return client.get("/api/health").json()


def test_health_answers_every_engines_fields(app, bare_app):
    health = answering(app)
    assert set(health) == HEALTH and health["scope"] == "service"
    engines = health["engines"]
    assert set(engines) == {"esrgan", "flux", "imagen"}
    assert set(engines["esrgan"]) == ESRGAN_STATUS  # on CPU: the GPU fields, empty
    assert engines["esrgan"]["gpu_available"] is False and engines["esrgan"]["gpu_name"] is None
    assert isinstance(engines["esrgan"]["models_loaded"], list)
    assert set(engines["flux"]) == FLUX_STATUS and engines["flux"]["installed"] is True
    assert set(engines["imagen"]) == IMAGEN_STATUS
    assert engines["imagen"]["credentials_found"] is True
    bare = answering(bare_app)["engines"]
    assert set(bare["flux"]) == FLUX_MISSING and bare["flux"]["installed"] is False
    assert "upscaler models pull flux" in bare["flux"]["message"]
    assert set(bare["imagen"]) == IMAGEN_STATUS and bare["imagen"]["credentials_found"] is False


def test_models_answer(app):
    body = app.get("/api/models").json()
    assert set(body) == {"esrgan"} and set(body["esrgan"]) == {"models", "unloadable", "default"}
    models = body["esrgan"]["models"]
    assert models and all(set(m) == MODEL for m in models)
    assert body["esrgan"]["default"] in {m["name"] for m in models}
    assert isinstance(body["esrgan"]["unloadable"], dict)


@pytest.mark.parametrize("engine,extra,fields", [
    ("esrgan", {"model": "tiny-rrdb"}, ESRGAN_STATS),
    ("flux", {"upscale_model": "tiny-rrdb", "tile_size": 64, "steps": 1, "mask_blur": 4,
              "tile_padding": 8}, FLUX_STATS),
    ("imagen", {}, IMAGEN_STATS),
])
def test_each_engines_job_stats(app, vertex, engine, extra, fields):
    vertex.reset()
    r = upload(app, png_bytes(photo("coffee", (48, 32))), engine=engine, target_width=96,
               wait=0, **extra)
    assert r.status_code in (200, 202), r.text
    status = wait_for_job(app, r.json()["jobId"])
    assert status["status"] == "completed", status
    stats = status["stats"]
    assert set(stats) == fields, sorted(set(stats) ^ fields)
    assert isinstance(stats["output_bytes"], int) and stats["output_bytes"] > 0
    if engine == "flux":
        assert stats["tile_log"] and all(set(t) == TILE_LOG for t in stats["tile_log"])
        assert set(stats["timeline"]) == {"start", "prompt", "prepass", "tiles", "image"}
        assert stats["replicas"] == sorted({t["replica"] for t in stats["tile_log"]})
    if engine == "esrgan":
        assert isinstance(stats["pass_input"], list) and stats["model"] == "tiny-rrdb"
    if engine == "imagen":
        assert stats["device"] == "vertex-ai" and len(stats["vertex_output"]) == 2
