"""Every pass within the output cap, and each key charged what its jobs compute: the pass plan
(pure), the engine on a real-format tiny model (no image over the cap is ever allocated), and
the whole graph in this process with keys on (charges, the per-day and stored-bytes limits,
GET /api/usage)."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest
import torch
from helpers.api import eventually
from helpers.config import settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client

from deployments.quotas import QuotaKeeper
from upscaler.commands.cli import main as cli_main
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.compute.engines import esrgan as esrgan_module
from upscaler.compute.engines.esrgan import EsrganEngine
from upscaler.compute.engines.models import ModelRegistry
from upscaler.compute.engines.usdu import plan_tiles
from upscaler.compute.images import DecodedImage
from upscaler.compute.passes import plan_passes
from upscaler.domain.jobs import FluxParams, JobWork, Size
from upscaler.domain.keys import KeyLimits, KeyStore
from upscaler.domain.metering import flux_steps_run, job_work
from upscaler.domain.quotas import KeyQuota
from upscaler.errors import OutputTooLarge
from upscaler.settings import Settings
from upscaler_client import Client

CAP = 20_000  # the graph's and the engine's output cap, in pixels: cheap to reach


# --- the pass plan -------------------------------------------------------------------------

def test_a_40_mp_upload_at_1_01_is_planned_within_the_cap():
    cap = Settings().max_output_pixels  # 150 MP
    w, h = 7744, 5164  # 40 MP, within the input cap
    plan = calculate_output_dimensions(w, h, 1.01)
    passes = plan_passes(w, h, plan.output_width, plan.output_height, 4, 3, cap)
    # Today's plan made one x4 pass of 640 MP; now the input is shrunk to cap / 16 first.
    assert passes.passes == 1 and passes.shrinks_input
    assert passes.largest_pass_pixels <= cap
    assert passes.largest_pass_pixels > 0.99 * cap  # as much detail as the cap allows
    (pw, ph), = passes.pass_sizes
    assert pw >= plan.output_width and ph >= plan.output_height  # then resampled down
    assert abs(pw / ph - w / h) < 0.01
    assert passes.computed_pixels == pw * ph + plan.output_width * plan.output_height


@pytest.mark.parametrize("side, factor", [(1000, 2), (100, 10), (3000, 1.5), (50, 16)])
def test_no_pass_ever_passes_the_cap(side, factor):
    cap = 5_000_000
    out = math.floor(side * factor)
    if out * out > cap:
        return  # refused at submit: the output itself is over the cap
    passes = plan_passes(side, side, out, out, 4, 3, cap)
    assert passes.passes >= 1 and passes.largest_pass_pixels <= cap


def test_a_model_whose_one_pixel_passes_the_cap_is_refused():
    with pytest.raises(OutputTooLarge, match="x4 model pass"):
        plan_passes(10, 10, 11, 11, 4, 3, 15)


# --- the engine: what it allocates -----------------------------------------------------------

@pytest.mark.parametrize("quantize", [True, False], ids=["esrgan", "flux-pre-pass"])
def test_the_engine_never_allocates_an_image_over_the_cap(upscale_models_dir, monkeypatch,
                                                          quantize):
    made: list[tuple[int, int]] = []

    def recording(sink_class):
        class Recording(sink_class):
            def __init__(self, channels, height, width, *args, **kwargs):
                made.append((width, height))
                super().__init__(channels, height, width, *args, **kwargs)
        return Recording

    for name in ("TensorSink", "QuantizedSink"):  # every image a pass writes into
        monkeypatch.setattr(esrgan_module, name, recording(getattr(esrgan_module, name)))
    engine = EsrganEngine(ModelRegistry(upscale_models_dir), device="cpu", context=16,
                          max_intermediate_pixels=CAP)
    rgb = np.asarray(photo("astronaut", (100, 100)).convert("RGB"), np.float32) / 255
    image = DecodedImage(rgb, None, "rgb", 8, None, "PNG")
    plan = calculate_output_dimensions(100, 100, 1.01)
    result = engine.upscale(image, "tiny-rrdb", plan, quantize=quantize)
    assert result.image.rgb.shape[:2] == (101, 101)
    # Today's one x4 pass would hold a 400x400 float image: 160,000 pixels over a 20,000 cap.
    assert made and max(w * h for w, h in made) <= CAP, made
    assert result.stats["pass_input"] == [35, 35] and result.stats["passes"] == 1
    assert result.stats["computed_pixels"] == 140 * 140 + 101 * 101
    assert torch.isfinite(torch.from_numpy(np.asarray(result.image.rgb, np.float32))).all()


# --- FLUX: megapixel-steps -------------------------------------------------------------------

def test_flux_is_charged_steps_times_tiles():
    params = FluxParams(upscale_model="tiny-rrdb", tile_size=64, tile_padding=16, steps=10,
                        denoise=0.5)
    plan = calculate_output_dimensions(100, 70, 2)  # 200 x 140: 4 x 3 tiles of 64
    work = job_work(Settings(), params, Size(width=100, height=70), plan, model_scale=4)
    tiles = plan_tiles(140, 200, 64, 16)
    assert work.flux_tiles == len(tiles) == 12
    crop_mp = 96 * 96 / 1e6  # 64 + 2 x 16 padding, every crop kept inside the image
    assert flux_steps_run(10, 0.5) == 5
    assert work.flux_megapixel_steps == pytest.approx(12 * crop_mp * 5)
    more_padding = job_work(Settings(), params.model_copy(update={"tile_padding": 32}),
                            Size(width=100, height=70), plan, model_scale=4)
    assert more_padding.flux_megapixel_steps > work.flux_megapixel_steps
    # The pre-pass is one x4 pass (400 x 280), resampled to 200 x 140.
    assert work.megapixels == pytest.approx((400 * 280 + 200 * 140) / 1e6)


# --- the whole graph, keys on ---------------------------------------------------------------

@pytest.fixture(scope="module")
def metered(tmp_path_factory, full_models_root):
    data = tmp_path_factory.mktemp("metered-data")
    store = KeyStore(str(data / "keys.json"))
    keys = {name: store.create(name, limits)[1] for name, limits in {
        "plain": KeyLimits(), "crop": KeyLimits(), "tight": KeyLimits(max_output_mp_per_day=0.02),
        "one-a-day": KeyLimits(max_jobs_per_day=1), "flux": KeyLimits(
            max_flux_mp_steps_per_day=0.03),
        "storer": KeyLimits(max_stored_mb=0.001), "brief": KeyLimits(result_ttl_s=3)}.items()}
    settings = settings_from_env({}, data_dir=data, models_dir=full_models_root, auth="keys",
                                 max_output_pixels=CAP, flux_min_tile_size=32, sync_wait_s=60,
                                 retention_sweep_s=0.5, device="cpu")
    with local_client(settings) as client:
        client.keys = keys
        yield client


def auth(client, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.keys[who]}"}


def post(client, who: str, image: bytes, engine: str = "esrgan", **fields):
    return client.post(f"/api/upscale/{engine}", headers=auth(client, who),
                       files={"file": ("p.png", image, "image/png")},
                       data={"model": "tiny-rrdb", **fields})


def usage(client, who: str) -> dict:
    r = client.get("/api/usage", headers=auth(client, who))
    assert r.status_code == 200, r.text
    return r.json()


WIDE = png_bytes(photo("rocket", (400, 16)))
CROP = {"target_width": "24", "target_height": "24", "crop_to_target": "true"}


def test_a_cropped_wide_upload_is_charged_the_pixels_computed(metered):
    # A key whose day allows the file's 576 pixels, not the 34,112 computed: refused at submit.
    over = post(metered, "tight", WIDE, **CROP)
    assert over.status_code == 429 and over.json()["error"] == "daily_quota_exhausted"
    assert int(over.headers["retry-after"]) > 0 and "ratelimit" in over.headers
    r = post(metered, "crop", WIDE, **CROP)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputSize"] == {"width": 24, "height": 24}  # the file: 576 pixels
    job = metered.get(f"/api/status/{body['jobId']}", headers=auth(metered, "crop")).json()
    computed = job["stats"]["computed_pixels"]  # what the engine made: 600 x 24 and its pass
    assert job["work"]["megapixels"] == pytest.approx(computed / 1e6)  # what was charged
    assert computed == 704 * 28 + 600 * 24  # the pass (input shrunk to the cap), the output
    figures = usage(metered, "crop")
    assert figures["megapixels_today"]["used"] == pytest.approx(computed / 1e6, abs=1e-3)
    # The plan before an upload says so too (the default model is a x4 one as well).
    plan = metered.get("/api/plan", headers=auth(metered, "plain"), params={
        "width": 400, "height": 16, **CROP}).json()
    assert plan["computedMegapixels"] == pytest.approx(computed / 1e6, abs=1e-3)
    assert figures["jobs_today"]["used"] == 1


def test_1_01_of_an_upload_whose_pass_would_pass_the_cap_runs_within_it(metered):
    r = post(metered, "plain", png_bytes(photo("astronaut", (100, 100))),
             upscale_factor="1.01")
    assert r.status_code == 200, r.text
    job = metered.get(f"/api/status/{r.json()['jobId']}", headers=auth(metered, "plain")).json()
    assert job["output_size"] == {"width": 101, "height": 101}
    assert job["stats"]["pass_input"] == [35, 35]  # shrunk so its x4 pass makes <= 20,000
    assert usage(metered, "plain")["megapixels_today"]["used"] == pytest.approx(
        (140 * 140 + 101 * 101) / 1e6, abs=1e-3)


def test_jobs_per_day_past_the_limit_get_429(metered):
    small = png_bytes(photo("coffee", (16, 16)))
    assert post(metered, "one-a-day", small, upscale_factor="2").status_code == 200
    again = post(metered, "one-a-day", small, upscale_factor="2")
    assert again.status_code == 429 and again.json()["error"] == "daily_quota_exhausted"
    assert "one more job" in again.json()["message"]
    assert 0 < int(again.headers["retry-after"]) <= 86400
    assert again.headers["ratelimit-policy"].startswith('"default";q=')
    assert usage(metered, "one-a-day")["jobs_today"] == {"used": 1, "limit": 1}


def test_flux_work_past_the_days_megapixel_steps_gets_429(metered):
    # 48 x 48 in 32 px tiles: 4 crops of 48 x 48 px, 4 steps each = 0.037 megapixel-steps.
    r = post(metered, "flux", png_bytes(photo("coffee", (24, 24))), engine="flux",
             upscale_factor="2", tile_size="32", tile_padding="16", mask_blur="4", steps="4",
             denoise="1")
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "daily_quota_exhausted"
    assert "megapixel-steps" in r.json()["message"]
    figures = usage(metered, "flux")
    assert figures["flux_megapixel_steps_today"] == {"used": 0, "limit": 0.03}


def test_results_kept_count_until_deleted_then_free_the_key(metered):
    small = png_bytes(photo("coffee", (16, 16)))
    first = post(metered, "storer", small, upscale_factor="2")
    assert first.status_code == 200, first.text
    job_id = first.json()["jobId"]
    size = len(metered.get(first.json()["outputUrl"], headers=auth(metered, "storer")).content)
    eventually(lambda: usage(metered, "storer")["stored_bytes"]["used"] == size)
    assert size > 0.001 * 2**20  # over this key's 1 KiB
    over = post(metered, "storer", small, upscale_factor="2")
    assert over.status_code == 429 and over.json()["error"] == "storage_quota_exhausted"
    assert int(over.headers["retry-after"]) > 0
    assert metered.delete(f"/api/jobs/{job_id}",
                          headers=auth(metered, "storer")).json()["result_deleted"]
    assert usage(metered, "storer")["stored_bytes"]["used"] == 0
    assert post(metered, "storer", small, upscale_factor="2").status_code == 200


def test_an_expired_result_frees_its_bytes(metered):
    r = post(metered, "brief", png_bytes(photo("coffee", (16, 16))), upscale_factor="2")
    assert r.status_code == 200, r.text
    eventually(lambda: usage(metered, "brief")["stored_bytes"]["used"] > 0)
    # Kept 3 s; the sweep (every 0.5 s here) deletes it and tells the quota keeper.
    eventually(lambda: usage(metered, "brief")["stored_bytes"]["used"] == 0)
    gone = metered.get(f"/api/status/{r.json()['jobId']}", headers=auth(metered, "brief"))
    assert gone.status_code == 410
    assert usage(metered, "brief")["jobs_today"]["used"] == 1


def test_usage_needs_a_key_and_is_in_the_openapi(metered):
    assert metered.get("/api/usage").status_code == 401
    paths = metered.get("/openapi.json", headers=auth(metered, "plain")).json()["paths"]
    assert "UsageResponse" in str(paths["/api/usage"])



def test_the_client_reads_the_keys_usage(metered):
    def forward(request: httpx.Request) -> httpx.Response:  # to the graph in this process
        r = metered.request(request.method, request.url.path,
                            headers={"Authorization": request.headers["authorization"]})
        return httpx.Response(r.status_code, json=r.json())

    with Client("http://upscaler.test", api_key=metered.keys["one-a-day"],
                transport=httpx.MockTransport(forward)) as client:
        figures = client.usage()
    assert figures["jobs_today"]["limit"] == 1 and figures["metered"] is True


def test_keys_create_sets_the_new_limits(tmp_path, capsys):
    keys_file = str(tmp_path / "keys.json")
    assert cli_main(["keys", "create", "metered", "--keys-file", keys_file,
                     "--max-jobs-per-day", "5", "--max-stored-mb", "64",
                     "--max-flux-mp-steps-per-day", "300"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    limits = KeyStore(keys_file).authenticate(key).limits
    assert (limits.max_jobs_per_day, limits.max_stored_mb,
            limits.max_flux_mp_steps_per_day) == (5, 64, 300)


def test_the_keepers_counts_survive_its_restart(tmp_path):
    settings = Settings(data_dir=tmp_path, device="cpu")
    quota = KeyQuota(60, 8, 100, 100, jobs_per_day=10, stored_bytes=10**6)
    keeper = QuotaKeeper.func_or_class(settings)
    asyncio.run(keeper.admit("a", "j1", "esrgan", JobWork(megapixels=2.5), quota, 10, True))
    asyncio.run(keeper.stored("a", "j1", 1234))
    asyncio.run(keeper.stored("a", "j2", 100))
    asyncio.run(keeper.unstored("a", "j2"))
    again = QuotaKeeper.func_or_class(settings)
    figures = asyncio.run(again.figures("a", quota))
    assert figures.stored_bytes.used == 1234
    assert figures.jobs.used == 1 and figures.megapixels.used == 2.5
