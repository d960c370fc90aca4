"""The OpenAPI document (fast, no Ray): valid OpenAPI 3.1 (openapi-spec-validator), every
operation with an example and the error answers it can really give, each an ErrorResponse
(any route added later is held to the same)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from helpers.local_graph import LocalGraph
from openapi_spec_validator import validate

from serve_app.access import caller, rate_limit
from serve_app.api import create_app
from upscaler.settings import Settings

# What a route's dependencies can answer, whatever the route does: derived from the routes
# themselves (their FastAPI dependencies), so the document is checked against the code.
CAN_ANSWER = {caller: {401, 403}, rate_limit: {429}}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(data_dir=Path(root) / "data", models_dir=Path(root) / "models",
                            device="cpu")
        app = create_app(LocalGraph(settings).services)
        app.openapi()
        return app


@pytest.fixture(scope="module")
def spec(app) -> dict:
    return app.openapi()


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        node = spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _has_example(spec: dict, node, depth: int = 0) -> bool:
    """An ``example``/``examples`` in this node or what it refers to (a few levels)."""
    if depth > 8:
        return False
    if isinstance(node, list):
        return any(_has_example(spec, n, depth) for n in node)
    if not isinstance(node, dict):
        return False
    if node.get("example") is not None or node.get("examples"):
        return True
    if "$ref" in node:
        return _has_example(spec, _resolve(spec, node), depth + 1)
    return any(_has_example(spec, v, depth + 1) for k, v in node.items()
               if k in ("schema", "allOf", "anyOf", "content", "application/json",
                        "multipart/form-data"))


def test_the_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def _operations(spec: dict) -> list[tuple[str, str]]:
    return sorted((m, p) for p, ops in spec["paths"].items() for m in ops)


def _calls(dependant) -> set:
    """Every function a route depends on, however deep."""
    return {dependant.call} | {c for d in dependant.dependencies for c in _calls(d)}


def test_each_route_documents_what_its_dependencies_answer(app, spec):
    """Every /api route is in the document, with the errors its dependencies can give (a
    caller: 401 and 403; the rate limit: 429)."""
    problems = []
    for route in iter_route_contexts(app.routes):  # with the routers' dependencies
        if not isinstance(route.original_route, APIRoute) or not route.path.startswith("/api/"):
            continue
        calls = _calls(route.dependant)
        for method in route.methods:
            op = spec["paths"].get(route.path, {}).get(method.lower())
            if op is None:
                problems.append(f"{method} {route.path}: not in the document")
                continue
            documented = {int(c) for c in op["responses"] if c[0] in "45"}
            for dependency, codes in CAN_ANSWER.items():
                if dependency in calls and not codes <= documented:
                    problems.append(f"{method} {route.path}: {sorted(codes - documented)} "
                                    f"({dependency.__name__}) not documented")
    assert not problems, "\n".join(problems)


def test_every_operation_has_examples_and_its_error_answers(spec):
    """Every operation (also any added later): an example, a description per answer, and its
    4xx/5xx answers as ErrorResponse with an example. (That a route answers no status it does
    not document: tests/test_fuzz.py.)"""
    problems = []
    for method, path in _operations(spec):
        op, where = spec["paths"][path][method], f"{method.upper()} {path}"
        ok = [r for code, r in op["responses"].items() if code.startswith("2")]
        body = op.get("requestBody", {}).get("content", {})
        if not ok or not all(r.get("description") for r in op["responses"].values()):
            problems.append(f"{where}: an answer without a description")
        if not any([*(_has_example(spec, r) for r in ok), _has_example(spec, body),
                    *(_has_example(spec, p) for p in op.get("parameters", []))]):
            problems.append(f"{where}: no example")
        if body and not _has_example(spec, body):
            problems.append(f"{where}: its request has no example")
        errors = {int(c) for c in op["responses"] if c[0] in "45"}
        if path.startswith("/api/") and path != "/api/health" and not errors:
            problems.append(f"{where}: no error answers documented")
        for code in sorted(errors - ({503} if path == "/api/health" else set())):
            answer = op["responses"][str(code)].get("content", {}).get("application/json", {})
            if answer.get("schema") != {"$ref": "#/components/schemas/ErrorResponse"}:
                problems.append(f"{where}: {code} is not an ErrorResponse")
            elif not {"error", "message"} <= set(answer.get("example") or {}):
                problems.append(f"{where}: {code} has no example")
            if code in (429, 503) and "Retry-After" not in op["responses"][str(code)].get(
                    "headers", {}):
                problems.append(f"{where}: {code} without its Retry-After header")
    assert not problems, "\n".join(problems)


def test_forms_and_headers_offer_no_null_and_uploads_take_their_fields(spec):
    """A form field or a header cannot be null (absent is its default); an upload takes its
    own fields and an image, nothing else (the routes refuse unknown fields)."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for parameter in op.get("parameters", []):
                assert '"null"' not in json.dumps(parameter), (method, path, parameter)
            body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if body is None:
                continue
            form = _resolve(spec, body["schema"])
            assert '"null"' not in json.dumps(form), (method, path)
            assert form["additionalProperties"] is False and form["properties"]["file"]
            assert form["anyOf"] == [{"required": ["file"]}, {"required": ["image"]}]


def test_no_validation_error_shape_the_service_never_sends(spec):
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert _has_example(spec, spec["components"]["schemas"]["ErrorResponse"])
