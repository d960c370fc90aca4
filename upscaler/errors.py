"""The one error hierarchy: every failure a client should hear about is an ``UpscalerError``; it
pickles across Ray handles and is mapped to HTTP in one place (``serve_app.errors``).
Design: docs/design/operations.md
"""

from __future__ import annotations

from typing import Any, ClassVar


class UpscalerError(Exception):
    http_status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None,
                 retry_after: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.headers = headers or {}  # more response headers (the RateLimit ones)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: pickle's default (cls(*args)) would drop them.
        return _restore, (type(self), self.message, self.code, self.retry_after, self.headers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


def _restore(cls: type[UpscalerError], message: str, code: str, retry_after: int | None,
             headers: dict[str, str] | None = None) -> UpscalerError:
    return cls(message, code=code, retry_after=retry_after, headers=headers)


class BadRequest(UpscalerError):
    http_status, default_code = 400, "bad_request"


class Unauthorized(UpscalerError):
    """No API key, or not a valid one (answered with ``WWW-Authenticate: Bearer``)."""

    http_status, default_code = 401, "unauthorized"


class Forbidden(UpscalerError):
    """A valid key that may not do this (revoked, a GCP project it is not allowed)."""

    http_status, default_code = 403, "forbidden"


class NotFound(UpscalerError):
    http_status, default_code = 404, "not_found"


class Conflict(UpscalerError):
    http_status, default_code = 409, "conflict"


class Superseded(Conflict):
    """An engine run of a job that moved on without it: a newer attempt took the job over (its
    driver's lease ran out) or the job ended elsewhere (cancelled). The run stops and writes
    nothing; the job's record is the truth."""

    default_code = "job_superseded"


class Gone(UpscalerError):
    """A job or result that existed and was removed (its retention ran out, or it was deleted)."""

    http_status, default_code = 410, "gone"


class RangeNotSatisfiable(UpscalerError):
    """A byte range that starts past a result's end (sent with ``Content-Range: bytes */N``)."""

    http_status, default_code = 416, "range_not_satisfiable"


class PayloadTooLarge(UpscalerError):
    """The upload, its pixels or what a model accepts is over a limit (the message names it)."""

    http_status, default_code = 413, "upload_too_large"


class UnsupportedMediaType(UpscalerError):
    http_status, default_code = 415, "unsupported_format"


class InvalidRequest(UpscalerError):
    http_status, default_code = 422, "invalid_request"


class InvalidImage(InvalidRequest):
    """An upload that is an accepted format but cannot be decoded (corrupt, truncated, empty)."""

    default_code = "corrupt_image"


class UnknownModel(InvalidRequest):
    default_code = "unknown_model"


class UnsupportedModel(InvalidRequest):
    """A weight file that spandrel cannot load as a single-image RGB/gray model."""

    default_code = "unsupported_model"


class OutputTooLarge(InvalidRequest):
    default_code = "output_too_large"


class RequestTimeout(UpscalerError):
    """The upload arrived too slowly."""

    http_status, default_code = 408, "request_timeout"


class HeadersTooLarge(UpscalerError):
    http_status, default_code = 431, "headers_too_large"


class RateLimited(UpscalerError):
    http_status, default_code = 429, "rate_limited"


class UpstreamError(UpscalerError):
    """A service we depend on (Vertex AI) refused or answered nonsense: credentials, project,
    permission, a malformed answer."""

    http_status, default_code = 502, "upstream_error"


class ServiceUnavailable(UpscalerError):
    """Not available now (no models, FLUX not installed, Vertex down): retrying later may work."""

    http_status, default_code = 503, "unavailable"


class StorageError(ServiceUnavailable):
    """Job storage cannot be used (wrong location, no credentials, unreachable)."""

    default_code = "storage_unavailable"


class InsufficientStorage(UpscalerError):
    """Job storage is full (ENOSPC): nothing more can be stored until space is freed."""

    http_status, default_code = 507, "insufficient_storage"


class UpstreamTimeout(UpscalerError):
    http_status, default_code = 504, "upstream_timeout"


def unwrap(exc: BaseException) -> BaseException:
    """The exception a remote call raised: a transport may wrap it, with the original as
    ``cause`` (Ray's ``RayTaskError``, whose class-level fields differ from the original's)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def all_error_classes() -> list[type[UpscalerError]]:
    """Every concrete class of the hierarchy (the contract tests walk it)."""
    found, todo = [], [UpscalerError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found
