"""Errors become HTTP answers here, and only here: ``{"error": code, "message": ..., "detail":
...}`` with the status of the error's class (``upscaler.errors``), ``Retry-After`` where it
helps, and the service still up."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.ray_compat import unwrap
from serve_app.schemas import ErrorResponse
from upscaler.errors import UpscalerError
from upscaler.storage_faults import storage_fault

logger = logging.getLogger("ray.serve")


def error_response(status: int, code: str, message: str, detail: Any = None,
                   job_id: str | None = None, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    body = ErrorResponse(error=code, message=message,
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
        logger.warning("storage: %s: %s", type(cause).__name__, cause)
        return upscaler_error_response(fault)
    logger.exception("unhandled error", exc_info=exc)  # the details stay in the log
    return error_response(500, "internal_error", "internal error; the service is still up "
                          "and its log has the details")


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
