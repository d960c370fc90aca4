"""What the OpenAPI document says beyond the routes' types: the error answers each route can
really give (``ErrorResponse`` with an example each) and the examples of answers, in one place
so the routes stay short."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serve_app.errors import public_message
from serve_app.openapi_forms import as_sent
from serve_app.schema_examples import JOB_ID
from serve_app.schemas import ErrorResponse

# One example per status, in the service's own words (upscaler/errors.py's codes).
ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("Bad request: an empty upload, or a result name that is not one",
          "empty_file", "the uploaded file is empty"),
    401: ("No API key, or not a valid one (keys on); `WWW-Authenticate: Bearer`",
          "unauthorized", "send an API key: Authorization: Bearer <key> or X-API-Key: <key>"),
    403: ("A revoked key, or a Google Cloud project this key may not name",
          "forbidden", "this API key was revoked"),
    404: ("No such job or result (or it belongs to another key)",
          "not_found", f"no job with id {JOB_ID}"),
    408: ("The upload stalled or took too long", "request_timeout",
          "the upload sent nothing for 30 s"),
    409: ("Conflict: an Idempotency-Key still being accepted, a job another replica runs",
          "job_finished", f"job {JOB_ID} is already completed"),
    410: ("The job ended longer ago than it is kept (its record and result were deleted), "
          "or its result was deleted", "job_expired", f"job {JOB_ID} ended longer ago than "
          "it is kept (result_ttl_s); its record and result were deleted"),
    416: ("The `Range` asked starts past the result's end; `Content-Range: bytes */SIZE` "
          "says its size", "range_not_satisfiable",
          "the range asked starts past the result's 1048576 bytes"),
    413: ("Over a limit: upload bytes, input pixels (the message names it)",
          "upload_too_large", "the upload is larger than the limit of 104,857,600 bytes"),
    415: ("Not an accepted image (the content is sniffed, the name ignored)",
          "unsupported_format", "not an accepted image; send PNG, JPEG, WebP, TIFF, BMP or GIF"),
    422: ("A field out of range, an unknown model, a corrupt image, an output over the cap",
          "unknown_model", "unknown model 'x'; available models: 4x-UltraSharp, DAT_light_x4"),
    429: ("A quota of the key: requests per minute, open jobs, output megapixels per day; "
          "`Retry-After` says when to retry", "too_many_open_jobs",
          "this key has 2 jobs open, its limit; retry when one has finished"),
    502: ("Vertex AI refused the call (credentials, permission, project)",
          "vertex_permission", public_message(502, "vertex_permission")),
    503: ("Not now: the engine's queue is full, too many uploads at once, the engine is not "
          "installed or not up, job storage unreachable; `Retry-After` when waiting helps",
          "engine_busy", public_message(503, "engine_busy")),
    507: ("Job storage is full", "insufficient_storage",
          public_message(507, "insufficient_storage")),
    504: ("Vertex AI did not answer in time", "vertex_timeout",
          public_message(504, "vertex_timeout")),
}
# 5xx answers carry the id the log has their details under (serve_app/errors.py).
ERROR_ID = "3f2a9c1b7d4e"
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying",
                               "schema": {"type": "integer"}}}


def error_responses(*codes: int, **examples: dict[str, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these error statuses; ``examples`` overrides a status's
    example (``e404={"error": ..., "message": ...}``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, error, message = ERRORS[code]
        example = {"error": error, "message": message, "detail": message, "jobId": None,
                   **({"error_id": ERROR_ID} if code >= 500 else {}),
                   **examples.get(f"e{code}", {})}
        out[code] = {"model": ErrorResponse, "description": description,
                     "content": {"application/json": {"example": example}}}
        if code in (429, 503):
            out[code]["headers"] = RETRY_AFTER
    return out


def install_openapi(app: FastAPI) -> None:
    """FastAPI adds a 422 with its own ``HTTPValidationError`` body to every route with
    parameters; this service answers validation errors with ``ErrorResponse`` (declared where
    they can happen), so those generated entries are dropped."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes)
            for ops in spec.get("paths", {}).values():
                for op in ops.values():
                    answer = op.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(answer):
                        del op["responses"]["422"]
            as_sent(spec, app.state.services.settings)
            schemas = spec.get("components", {}).get("schemas", {})
            if "HTTPValidationError" not in str(spec.get("paths")):
                schemas.pop("HTTPValidationError", None)
                schemas.pop("ValidationError", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
