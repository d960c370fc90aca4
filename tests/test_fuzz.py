"""Property-based tests of the OpenAPI schema (schemathesis) against the whole graph in this
process: a request the schema allows is accepted, or refused for a reason no schema can state
(``BEYOND_THE_SCHEMA``) with a status its route documents; a request outside the schema is
refused with a 4xx. Nothing answers a 5xx."""

from __future__ import annotations

import io

import pytest
import schemathesis
from helpers.config import TEST_LIMITS, settings_from_env, vertex_env
from helpers.local_graph import local_client
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode

from serve_app.deps import FILE_FIELDS

EXAMPLES = 20  # per route and method: a few seconds each on 2 cores
NEGATIVE_EXAMPLES = 10
LOOPBACK = {"Host": "localhost"}
ROUTES = r"^/api/(upscale|status|jobs|results|plan)"

# Why a request the schema allows may still be refused, by (status, error code): what depends
# on the server's state or its settings, or compares values, which a schema cannot say.
BEYOND_THE_SCHEMA = {
    (404, "not_found"): "a well-formed id of no job here",
    (422, "output_too_large"): "the output cap: the image's pixels times the scale",
    (422, "jpeg_too_large"): "JPEG's 65,535 px side: the image's size times the scale",
    (422, "unknown_model"): "the models installed on this server",
    (422, "tile_padding_below_mask_blur"): "two fields compared",
    (422, "bleed_needs_print_size"): "a bleed above 0 with no print size: a value compared",
    (422, "bleed_too_large"): "the bleed compared with the side the image's aspect gives",
    (422, "factor_not_offered"): "Imagen's factors per model, the default model a setting",
    (422, "webhooks_not_configured"): "webhooks need a signing secret on the server",
    (422, "webhook_url_refused"): "the URL's host is resolved and must be public",
    (422, "idempotency_key_reused"): "the key was sent before with another request",
    (409, "idempotency_key_in_use"): "the key's first request is still being accepted",
    (403, "project_not_allowed"): "the server's allowed Google Cloud projects",
    (429, "too_many_open_jobs"): "a quota",
    (503, "engine_busy"): "the engine's queue is full",
}


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (120, 30, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def small_app(tmp_path_factory, full_models_root, vertex):
    """The whole graph, with the tiny ESRGAN model by default and a small output cap: an
    accepted request runs in a second or so."""
    settings = settings_from_env(
        {**TEST_LIMITS, **vertex_env(vertex)}, data_dir=tmp_path_factory.mktemp("fuzz-data"),
        models_dir=full_models_root, flux_min_tile_size=32, sync_wait_s=30, device="cpu",
        default_models=["tiny-compact"], max_output_pixels=128 * 128)
    with local_client(settings) as client:
        yield client


def _judge(operation, mode: GenerationMode, case, response) -> None:
    status, where = response.status_code, f"{operation.method.upper()} {operation.path}"
    code = response.json().get("error") if status >= 400 else None
    said = (where, case.path_parameters, case.query, case.body, status, response.text[:300])
    documented = str(status) in operation.definition.raw["responses"]
    assert status < 500 or (status, code) in BEYOND_THE_SCHEMA, said
    if mode.is_positive and status >= 400:
        assert (status, code) in BEYOND_THE_SCHEMA and documented, said
    if mode.is_negative:
        assert status >= 400 and documented, said


def _fuzz(small_app, operation, mode: GenerationMode, examples: int) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def answers(case) -> None:
        if mode.is_positive and isinstance(case.body, dict):
            for name in FILE_FIELDS:  # no schema says "a decodable image": send one
                if name in case.body:
                    case.body[name] = tiny_png()
        response = case.call(headers=LOOPBACK, timeout=120)
        if response.status_code == 202 and "jobId" in response.json():
            # Accepted: cancelled, so the jobs (FLUX's: many tiles) do not pile up.
            small_app.delete(f"/api/jobs/{response.json()['jobId']}")
        _judge(operation, mode, case, response)

    answers()


def _run(small_app, mode: GenerationMode, examples: int) -> list[str]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", small_app.app,
                                            headers=LOOPBACK).include(path_regex=ROUTES)
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")
        _fuzz(small_app, operation, mode, examples)
    return seen


def test_requests_the_schema_allows_are_accepted(small_app):
    seen = _run(small_app, GenerationMode.POSITIVE, EXAMPLES)
    assert len(seen) == 8, seen  # with the events stream and the plan


def test_requests_outside_the_schema_are_refused_with_a_4xx(small_app):
    _run(small_app, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
