"""Typed errors of the client: the API's error body (``{"error": code, "message": ...,
"detail": ..., "jobId": ...}``) as an exception of the class of its HTTP status, a failed or
cancelled job, and a service that cannot be reached."""

from __future__ import annotations

from typing import Any


class UpscalerClientError(Exception):
    """Every error this package raises."""


class ApiError(UpscalerClientError):
    """The service answered with an error status. ``code`` is the API's machine-readable code
    (``unknown_model``, ``rate_limited``...), ``message`` says what to fix."""

    status_code: int = 0

    def __init__(self, status_code: int, code: str, message: str, detail: Any = None,
                 job_id: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.code, self.message = status_code, code, message
        self.detail, self.job_id, self.retry_after = detail, job_id, retry_after


class BadRequest(ApiError):  # 400
    pass


class Unauthorized(ApiError):  # 401: no API key, or a wrong one
    pass


class Forbidden(ApiError):  # 403: a revoked key, a project it may not name
    pass


class NotFound(ApiError):  # 404: unknown job or result (or another key's)
    pass


class Conflict(ApiError):  # 409: cancelling a finished job
    pass


class PayloadTooLarge(ApiError):  # 413: upload or pixel limits
    pass


class UnsupportedMediaType(ApiError):  # 415: not an accepted image
    pass


class InvalidRequest(ApiError):  # 422: a field out of range, unknown model, corrupt image
    pass


class RateLimited(ApiError):  # 429 (after the client's own retries)
    pass


class ServerError(ApiError):  # 5xx
    pass


class ServiceUnavailable(ServerError):  # 503 (after the client's own retries)
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 415: UnsupportedMediaType, 422: InvalidRequest, 429: RateLimited,
    503: ServiceUnavailable}


def api_error(status_code: int, body: Any, retry_after: float | None = None) -> ApiError:
    """The exception for an error answer; ``body`` is its parsed JSON (or text)."""
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else ApiError)
    if isinstance(body, dict) and "message" in body:
        return cls(status_code, str(body.get("error") or "error"), str(body["message"]),
                   body.get("detail"), body.get("jobId"), retry_after)
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own shape, e.g. from a proxy
        return cls(status_code, "http_error", str(body["detail"]), body, None, retry_after)
    text = str(body or "").strip()[:500] or f"HTTP {status_code}"
    return cls(status_code, "http_error", text, None, None, retry_after)


class JobFailed(UpscalerClientError):
    """The job ended ``failed`` (or ``cancelled``): ``job`` is its last status."""

    def __init__(self, job: Any) -> None:
        self.job = job
        what = job.error or job.status
        super().__init__(f"job {job.id} {job.status}: {what}"
                         + (f" ({job.error_code})" if job.error_code else ""))


class JobCancelled(JobFailed):
    pass


class WaitTimeout(UpscalerClientError):
    """The job did not end within the time the caller gave; it may still be running."""


class ConnectionFailed(UpscalerClientError):
    """The service could not be reached (refused, DNS, TLS, timed out) after the retries."""


class WebhookVerificationError(UpscalerClientError):
    """A webhook's signature, timestamp or id is missing, wrong or too old."""
