"""Errors become HTTP answers here, and only here: ``{"error": code, "message": ..., "detail":
...}`` with the status of the error's class (``upscaler.errors``), ``Retry-After`` where it
helps, and the service still up.

A failure on the service's side (5xx) is told to the client in its own terms, from one table
(``PUBLIC_MESSAGES``): never the storage URL, a model path, a host or an exception's text. The
details go to the log under an ``error_id`` the answer carries, so an operator finds them."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.schemas import ErrorResponse
from upscaler.domain.storage_faults import storage_fault
from upscaler.errors import UpscalerError, unwrap

logger = logging.getLogger("ray.serve")

# What a client hears of each 5xx case, by code: what happened and what waiting or the
# operator can do, with no path, URL or host (the log has those, under the error_id).
PUBLIC_MESSAGES: dict[str, str] = {
    "storage_unavailable": "job storage is not available right now; retry shortly",
    "insufficient_storage": "job storage is full; nothing new can be stored until the "
                            "operator frees space",
    "flux_not_installed": "FLUX is not installed on this service (the operator installs it "
                          "with `upscaler models pull flux`)",
    "no_models": "no super-resolution model is installed on this service (the operator "
                 "installs one with `upscaler models pull default`)",
    "engine_busy": "this engine has as many jobs open as it takes; retry shortly",
    "busy": "this service is taking in as many requests as it can; retry shortly",
    "replica_lost": "the server process taking this request was lost before it answered; the "
                    "request may or may not have been taken: repeat it with the same "
                    "Idempotency-Key (a repeat answers the job the first one made, never a "
                    "second one)",
    "credentials_missing": "Imagen has no Google Cloud credentials on this service (the "
                           "operator sets UPSCALER_GCP_CREDENTIALS_FILE to a service-account "
                           "key with the role roles/aiplatform.user)",
    "project_missing": "no Google Cloud project for Imagen: send gcp_project_id (or the "
                       "operator sets a default)",
    "vertex_permission": "Vertex AI refused this service's credentials (the operator gives "
                         "its service account the role roles/aiplatform.user)",
    "vertex_not_found": "Vertex AI does not offer the upscaling model for this project and "
                        "region",
    "vertex_unavailable": "Vertex AI is not available right now; retry later",
    "vertex_timeout": "Vertex AI did not answer in time; retry later",
    "vertex_bad_response": "Vertex AI's answer could not be read; retry later",
}
# Any other 5xx: by status.
STATUS_MESSAGES: dict[int, str] = {
    500: "internal error; the service is still up and its log has the details",
    502: "a service this one depends on refused the request",
    503: "this service cannot do this right now; retry later",
    504: "a service this one depends on did not answer in time; retry later",
    507: "job storage is full",
}


def public_message(status: int, code: str) -> str:
    return PUBLIC_MESSAGES.get(code) or STATUS_MESSAGES.get(status, STATUS_MESSAGES[500])


def log_failure(status: int, code: str, details: str, exc: BaseException | None = None,
                job_id: str | None = None) -> str:
    """Log a 5xx's details under a new error id, and return the id."""
    error_id = secrets.token_hex(6)
    where = f" job {job_id}" if job_id else ""
    logger.warning("error_id=%s%s %d %s: %s", error_id, where, status, code, details,
                   exc_info=exc if status == 500 else None)
    return error_id


def public_error(exc: UpscalerError, job_id: str | None = None) -> UpscalerError:
    """What a client may see of ``exc``: itself below 500; a 5xx as the same class and code
    with the public message and the id its details were logged under (a failed job's
    record keeps this, not the original)."""
    if exc.http_status < 500:
        return exc
    error_id = log_failure(exc.http_status, exc.code, exc.message, job_id=job_id)
    return type(exc)(f"{public_message(exc.http_status, exc.code)} (error id {error_id})",
                     code=exc.code, retry_after=exc.retry_after, headers=exc.headers)


def error_response(status: int, code: str, message: str, detail: Any = None,
                   job_id: str | None = None, headers: dict[str, str] | None = None,
                   error_id: str | None = None) -> JSONResponse:
    if status >= 500 and error_id is None:  # a 5xx's words come from the table, always
        error_id = log_failure(status, code, message)
        message, detail = public_message(status, code), None
    body = ErrorResponse(error=code, message=message, error_id=error_id,
                         detail=detail if detail is not None else message, jobId=job_id)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def upscaler_error_response(exc: UpscalerError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.retry_after:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.http_status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="upscaler"')
    return error_response(exc.http_status, exc.code, exc.message, headers=headers or None)


async def _upscaler_error(_: Request, exc: Exception) -> JSONResponse:
    # A replica's error arrives wrapped by Ray; its own fields are on the original.
    cause = unwrap(exc)
    assert isinstance(cause, UpscalerError)
    return upscaler_error_response(cause)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    cause = unwrap(exc)
    if isinstance(cause, UpscalerError):
        return upscaler_error_response(cause)
    if (fault := storage_fault(cause)) is not None:  # a full disk, storage away: 507, 503
        return upscaler_error_response(type(fault)(
            f"{fault.message}: {type(cause).__name__}: {cause}", code=fault.code,
            retry_after=fault.retry_after))
    # The details stay in the log, with the traceback, under the answer's error id.
    error_id = log_failure(500, "internal_error", f"{type(cause).__name__}: {cause}", exc)
    return error_response(500, "internal_error", public_message(500, "internal_error"),
                          error_id=error_id)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg')}")
    # Echo scalar inputs only: a form-level error carries the whole form (with the upload).
    detail = [{k: v for k, v in e.items() if k != "ctx" and (
        k != "input" or isinstance(v, (str, int, float, bool, type(None))))}
        for e in exc.errors()]
    return error_response(422, "invalid_request", "; ".join(problems), detail=detail)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UpscalerError, _upscaler_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
