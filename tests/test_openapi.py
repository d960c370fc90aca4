"""The OpenAPI document (fast, no Ray): valid OpenAPI 3.1 (openapi-spec-validator), every
operation with an example and the error answers it can really give, each an ErrorResponse
(any route added later is held to the same)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from helpers.local_graph import LocalGraph
from openapi_spec_validator import validate

from serve_app.api import create_app
from upscaler.settings import Settings

# The error statuses each operation can give (see serve_app/openapi_docs.py).
UPLOAD_ERRORS = {400, 401, 403, 408, 409, 413, 415, 422, 429, 503, 507}
EXPECTED = {
    ("post", "/api/upscale/esrgan"): UPLOAD_ERRORS,
    ("post", "/api/upscale/flux"): UPLOAD_ERRORS,
    ("post", "/api/upscale/imagen"): UPLOAD_ERRORS | {502, 504},
    ("get", "/api/status/{job_id}"): {401, 403, 404, 410, 429, 503},
    ("delete", "/api/jobs/{job_id}"): {401, 403, 404, 409, 410, 429, 503},
    ("get", "/api/results/{filename}"): {400, 401, 403, 404, 410, 429, 503},
    ("get", "/api/models"): {401, 403, 429},
    ("get", "/api/usage"): {401, 403, 429, 503},
    ("get", "/api/health"): set(),
}


@pytest.fixture(scope="module")
def spec() -> dict:
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(data_dir=Path(root) / "data", models_dir=Path(root) / "models",
                            device="cpu")
        return create_app(LocalGraph(settings).services).openapi()


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


def test_the_routes_here_are_documented(spec):
    assert set(EXPECTED) <= set(_operations(spec))


def test_every_operation_has_examples_and_its_error_answers(spec):
    """Every operation (also any added later): an example, a description per answer, and its
    4xx/5xx answers as ErrorResponse with an example; the routes above, exactly the errors
    they can give."""
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
        if (method, path) in EXPECTED:
            expected = EXPECTED[(method, path)]
            if errors != expected | ({503} if path == "/api/health" else set()):
                problems.append(f"{where}: errors {sorted(errors)}, expected {sorted(expected)}")
        elif path.startswith("/api/") and not errors:
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


def test_no_validation_error_shape_the_service_never_sends(spec):
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert _has_example(spec, spec["components"]["schemas"]["ErrorResponse"])
