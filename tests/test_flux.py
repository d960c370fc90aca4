"""FLUX (Ultimate SD Upscale) with tiny models in the real formats, loaded by the production
loader with the hub offline: the coordination in this process through the HTTP app, and the
real-width community GGUF through its conversion path once. Replicas, kills and restarts are in
tests/test_service.py and tests/test_restart.py."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from helpers.api import upload, wait_for_job
from helpers.flux_factory import write_flux_models
from helpers.images import photo, png_bytes
from PIL import Image

from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import Completed, JobRecord

# Small tiles and few steps keep a job to a second or so on 2 CPU cores.
JOB = {"upscale_factor": "2", "tile_size": "64", "tile_padding": "16", "mask_blur": "4",
       "steps": "2", "denoise": "0.5", "upscale_model": "tiny-rrdb"}


def submit(client, data: bytes, **fields) -> dict:
    r = upload(client, data, engine="flux", **{**JOB, **fields})
    assert r.status_code == 202, r.text
    return r.json()


def result(client, status: dict) -> Image.Image:
    return Image.open(io.BytesIO(client.get(status["output_url"]).content))


def test_flux_job_exact_size_dpi_and_repeatable(app):
    health = app.get("/api/health").json()
    assert health["engines"]["flux"]["installed"] is True
    body = submit(app, png_bytes(photo("coffee", (96, 64))), target_dpi="200")
    assert body["status"] in ("queued", "processing") and body["estimatedTime"] > 0
    assert body["outputSize"] == {"width": 192, "height": 128}
    status = wait_for_job(app, body["jobId"], timeout=120)
    assert status["status"] == "completed", status
    stats = status["stats"]
    assert stats["tiles"] == 6 and stats["tiles_computed"] == 6 and stats["tiles_resumed"] == 0
    assert sorted(t["tile"] for t in stats["tile_log"]) == list(range(6))
    out = result(app, status)
    assert out.size == (192, 128) and round(out.info["dpi"][0]) == 200
    # The redraw changed the pre-pass (denoise 0.5), within the colour fix's bounds.
    again = wait_for_job(app, submit(app, png_bytes(photo("coffee", (96, 64))),
                                     target_dpi="200")["jobId"], timeout=120)
    assert np.array_equal(np.asarray(out), np.asarray(result(app, again)))  # same seed
    other = wait_for_job(app, submit(app, png_bytes(photo("coffee", (96, 64))),
                                     target_dpi="200", seed="5")["jobId"], timeout=120)
    assert not np.array_equal(np.asarray(out), np.asarray(result(app, other)))


@pytest.mark.parametrize("fields,code", [
    ({"denoise": "1.5"}, "invalid_request"), ({"steps": "0"}, "invalid_request"),
    ({"steps": "101"}, "invalid_request"), ({"tile_size": "72"}, "invalid_request"),
    ({"tile_size": "4096"}, "invalid_request"), ({"upscale_model": "4x-Nope"}, "unknown_model"),
    ({"mask_blur": "16", "tile_padding": "8"}, "tile_padding_below_mask_blur"),
    ({"color_fix": "magic"}, "invalid_request"),
    ({"upscale_factor": "16", "tile_size": "64"}, "output_too_large"),
])
def test_flux_bad_input(app, fields, code):
    data = png_bytes(photo("rocket", (400, 400) if code == "output_too_large" else (32, 32)))
    r = upload(app, data, engine="flux", **{**JOB, **fields})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == code


def test_flux_cancel_stops_the_tiles(app):
    job = submit(app, png_bytes(photo("astronaut", (128, 128))), tile_size="32", steps="4")
    deadline = time.monotonic() + 120
    while app.get(f"/api/status/{job['jobId']}").json()["progress"] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = app.delete(f"/api/jobs/{job['jobId']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    status = app.get(f"/api/status/{job['jobId']}").json()
    assert status["status"] == "cancelled" and status["progress"] < 100
    small = submit(app, png_bytes(photo("rocket", (32, 32))))
    assert wait_for_job(app, small["jobId"], timeout=120)["status"] == "completed"


def test_resume_computes_only_missing_tiles_and_gives_the_same_image(app):
    """The coordinator keeps each finished tile in job storage: a job run again after a crash
    redraws only the tiles it lacks, and the image is the one an uninterrupted run gives."""
    graph, store = app.graph, app.graph.services.store
    full = wait_for_job(app, submit(app, png_bytes(photo("chelsea", (96, 64))),
                                    seed="11")["jobId"], timeout=120)
    reference = np.asarray(result(app, full))

    # The same job, interrupted after 4 of its 6 tiles: the upload, the pre-pass and 4 tiles
    # are stored (as the coordinator writes them), then the coordinator runs it again.
    job = JobRecord.model_validate({**store.load(full["job_id"]).model_dump(),
                                    "job_id": "a" * 32, "state": "processing"})
    store.save(job)  # an open record: the coordinator's runs are of its attempt (fenced)
    store.storage.write_bytes(JobStore.input_key(job.job_id),
                              png_bytes(photo("chelsea", (96, 64))))

    async def run_to(stop_after: int | None) -> list:
        events = []
        async for event in graph.deployments["FluxCoordinator"].run(job.spec()):
            events.append(event)
            if stop_after is not None and len(list(store.storage.list(
                    JobStore.tiles_prefix(job.job_id)))) >= stop_after:
                break
        return events

    asyncio.run(run_to(4))
    assert len(list(store.storage.list(JobStore.tiles_prefix(job.job_id)))) == 4
    done = asyncio.run(run_to(None))[-1]
    assert isinstance(done, Completed)
    assert done.stats.tiles_resumed == 4 and done.stats.tiles_computed == 2
    resumed = Image.open(io.BytesIO(store.storage.read_bytes(done.result_key)))
    assert np.array_equal(np.asarray(resumed), reference)


@pytest.mark.slow
def test_community_gguf_at_real_width_loads_through_the_conversion_path(tmp_path):
    """A Q8_0 GGUF in city96's layout (BFL key names, the width diffusers' converter assumes)
    through the production loader, offline, and one tile redrawn."""
    from upscaler.compute.engines.flux import FluxTileEngine

    root = write_flux_models(tmp_path / "models", real_width=True)
    engine = FluxTileEngine(root, "cpu")
    block = engine.pipe.transformer.transformer_blocks[0].attn.to_q
    assert type(block).__name__ == "GGUFLinear" and block.weight.quant_type.name == "Q8_0"
    crop = np.asarray(photo("coffee", (64, 48)), dtype=np.float32) / 255
    out = engine.redraw(crop, engine.encode_prompt(""), 0.5, 2, 3.5, seed=0)
    assert out.shape == crop.shape and np.isfinite(out).all()
    assert 0 < float(np.abs(out - crop).mean()) < 0.5


def test_a_superseded_flux_run_stops_and_writes_no_result(app):
    """The coordinator's run is one attempt of its job (deployments/fencing.py): once the
    record's attempt moves on (a takeover), it stops after its tile in progress, cancels the
    tiles still drawing and writes no result; the tiles it stored stay for the new attempt."""
    from deployments.fencing import FENCE_EVERY_S, AttemptFence
    from upscaler.compute.dimensions import calculate_output_dimensions
    from upscaler.domain.jobs import Engine, FluxParams, JobState, Progress, Size
    from upscaler.errors import Superseded

    graph, store = app.graph, app.graph.services.store
    params = FluxParams(upscale_model="tiny-rrdb", upscale_factor=2, tile_size=32,
                        tile_padding=16, mask_blur=4, steps=4, denoise=0.5)
    job = JobRecord(engine=Engine.flux, params=params, input_format="PNG",
                    plan=calculate_output_dimensions(128, 128, 2),
                    input_size=Size(width=128, height=128),
                    output_size=Size(width=256, height=256), state=JobState.processing,
                    # Driven by this test: the app's own sweep must not take it over first.
                    lease_owner="this-test", lease_expires_at=time.time() + 3600)
    store.storage.write_bytes(JobStore.input_key(job.job_id),
                              png_bytes(photo("astronaut", (128, 128))))
    store.save(job)

    async def run() -> list:
        tiles = []
        with pytest.raises(Superseded):
            async for event in graph.deployments["FluxCoordinator"].run(job.spec()):
                if isinstance(event, Progress) and event.stage is None:
                    tiles.append(event.tile)
                    if len(tiles) == 1:  # at once: not queued behind the tiles' threads
                        store.update(job.job_id, lambda j: j.model_copy(
                            update={"attempts": 2, "lease_owner": "another-runner"}))
                        # The run is held at this tile while its fence reads the record:
                        # however fast the tiles, it has not finished them all.
                        await asyncio.sleep(2 * FENCE_EVERY_S + 0.5)
        return tiles

    tiles = asyncio.run(asyncio.wait_for(run(), 120))
    assert 1 <= len(tiles) < 64
    assert not store.storage.exists(JobStore.result_key(job.spec().result_filename))
    stored = len(list(store.storage.list(JobStore.tiles_prefix(job.job_id))))
    assert stored >= len(tiles)  # kept: the new attempt resumes from them
    assert AttemptFence(store, job.spec()).check() is not None
    store.delete_work_files(job.job_id)
