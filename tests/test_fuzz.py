"""Property-based fuzzing of the OpenAPI schema (schemathesis): whatever the upscale and job
routes are sent, within the schema and outside it, they answer without a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES = 25  # per route and method: a few seconds each on 2 cores
LOOPBACK = {"Host": "localhost"}


def test_upscale_and_job_routes_never_answer_5xx(app):
    """Against the whole graph in this process (keys off, so every validation path is reached
    rather than a 401)."""
    # A loopback Host: with keys off the app answers no other (schemathesis sends testserver).
    schema = schemathesis.openapi.from_asgi("/openapi.json", app.app, headers=LOOPBACK).include(
        path_regex=r"^/api/(upscale|status|jobs|results|plan)")
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_without_5xx(case) -> None:
            response = case.call(headers=LOOPBACK)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        answers_without_5xx()
    assert len(seen) == 8, seen  # with the events stream and the plan
