"""What crosses a Ray handle goes through pickle: every contract type comes back with its
fields (and, for the JSON ones, the same answer), and a misspelt field is refused where the
answer is built."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pydantic import ValidationError

from upscaler.compute.engines.flux_files import PromptEmbeds
from upscaler.compute.engines.models import ModelInfo
from upscaler.domain.contracts import EngineStatus, ModelList, TileResult
from upscaler.domain.job_stats import EsrganStats, FluxStats, ImagenStats, TileLogEntry
from upscaler.domain.jobs import END_EVENTS, Completed, JobState
from upscaler.domain.quotas import Allowance, RateState, UsageFigures
from upscaler.domain.webhooks import DEFAULT_EVENTS, EVENTS, parse_events

INFO = ModelInfo(name="tiny-rrdb", architecture="RRDB", scale=4, input_channels=3,
                 output_channels=3, supports_half=True, supports_bfloat16=False,
                 size_bytes=1234, file="tiny-rrdb.safetensors")
ENTRY = TileLogEntry(replica="r1", seconds=0.5, started_at=1.0, finished_at=1.5, tile=3,
                     sent=0.9, returned=1.6, stored=1.7)
ESRGAN = EsrganStats(model="tiny-rrdb", architecture="RRDB", model_scale=4, passes=1,
                     pass_input=[48, 32], computed_pixels=24576, tile_size=64, context=16,
                     tiles=2, oom_retries=0, device="cpu", dtype="float32", model_seconds=0.1,
                     engine_seconds=0.2, replica="r1").with_output(0.01, 999)
FLUX = FluxStats(tiles=1, tiles_computed=1, tiles_resumed=0, replicas=["r1"], tile_log=[ENTRY],
                 timeline={"start": 1.0, "image": 2.0}, seconds=1.0).with_output(0.02, 1000)
IMAGEN = ImagenStats(model="imagen-4.0-upscale-preview", vertex_factor=2,
                     vertex_output=[96, 64], vertex_seconds=0.3, device="vertex-ai")


def round_trip(value):
    return pickle.loads(pickle.dumps(value))


@pytest.mark.parametrize("status", [
    EngineStatus(gpu_available=False, gpu_name=None, device="cpu", models_loaded=["a"],
                 busy_jobs=1, completed_jobs=2, superseded_jobs=0, replica="r1"),
    EngineStatus(installed=False, replica="r2", tiles_done=0, message="run `models pull`"),
    EngineStatus(credentials_found=False, credentials_source=None, project=None,
                 configured=False, model="m", region="us-central1", api_endpoint="x", calls=0),
])
def test_engine_status_pickles_with_the_fields_it_was_given(status):
    back = round_trip(status)
    assert back == status and back.as_json() == status.as_json()
    # Only the fields given are answered: the JSON of each engine is what it always was.
    assert set(back.as_json()) == set(status.model_fields_set)
    busy = back.model_copy(update={"state": "busy"})
    assert busy.as_json() == {**status.as_json(), "state": "busy"}


def test_engine_status_readiness():
    assert EngineStatus(device="cpu").ready  # ESRGAN says nothing of installing
    assert not EngineStatus(installed=False).ready
    assert not EngineStatus(credentials_found=True, configured=False).ready
    assert not EngineStatus(error="no answer: GetTimeoutError").answered


def test_a_misspelt_field_is_refused():
    with pytest.raises(ValidationError):
        EngineStatus(credential_found=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ImagenStats(model="m", vertex_factor=2, vertex_output=[1, 1], vertex_seconds=0.0,
                    device="vertex-ai", replicas=["x"])  # type: ignore[call-arg]


def test_model_list_pickles_and_finds_models():
    listing = ModelList((INFO,), {"broken.pth": "not a model"}, "tiny-rrdb")
    back = round_trip(listing)
    assert back == listing and back.models[0].scale == 4 and back.unloadable == listing.unloadable
    assert back.find(None) == INFO and back.find("tiny-rrdb") == INFO and back.find("x") is None
    assert back.as_json() == {"models": [INFO.as_dict()], "unloadable": {"broken.pth":
                              "not a model"}, "default": "tiny-rrdb"}


def test_tile_result_and_prompt_pickle_with_their_arrays():
    pixels = np.random.default_rng(0).random((8, 8, 3)).astype(np.float16)
    embeds = round_trip(PromptEmbeds(pixels[None, :, :, 0], pixels[None, 0, :, 1]))
    assert np.array_equal(embeds.prompt_embeds, pixels[None, :, :, 0])
    assert np.array_equal(embeds.pooled, pixels[None, 0, :, 1])
    back = round_trip(TileResult(pixels, "r1", 0.5, 1.0, 1.5))
    assert back.image.dtype == np.float16 and np.array_equal(back.image, pixels)
    assert (back.replica, back.seconds, back.started_at, back.finished_at) == ("r1", 0.5, 1.0,
                                                                               1.5)


@pytest.mark.parametrize("stats", [ESRGAN, FLUX, IMAGEN])
def test_job_stats_pickle_inside_their_event(stats):
    event = round_trip(Completed("results/x.png", "x.png", stats))
    assert event.stats == stats and type(event.stats) is type(stats)
    assert event.stats.as_json() == stats.as_json()


def test_job_stats_json_is_the_engines_fields():
    assert ESRGAN.as_json()["output_bytes"] == 999 and ESRGAN.as_json()["pass_input"] == [48, 32]
    assert FLUX.as_json()["tile_log"] == [ENTRY.model_dump(exclude_unset=True)]
    assert FLUX.as_json()["timeline"] == {"start": 1.0, "image": 2.0}
    assert "encode_seconds" not in IMAGEN.as_json()  # set once the result is written


def test_usage_and_rate_figures_pickle():
    figures = UsageFigures(*(Allowance(float(i), 10.0) for i in range(5)),
                           requests_per_minute=60, resets_in_s=3600)
    assert round_trip(figures) == figures and round_trip(figures).jobs == Allowance(2.0, 10.0)
    assert round_trip(RateState(60, 59, 1)) == RateState(60, 59, 1)


def test_webhook_events_are_one_list():
    assert EVENTS == ("started", "progress", "completed", "failed", "cancelled")
    assert set(DEFAULT_EVENTS) == {e.value for e in END_EVENTS} == {"completed", "failed",
                                                                    "cancelled"}
    assert all(END_EVENTS[state] == state.value for state in END_EVENTS)
    assert set(END_EVENTS) == {JobState.completed, JobState.failed, JobState.cancelled}
    assert parse_events(" Progress,completed ,progress") == ["progress", "completed"]
