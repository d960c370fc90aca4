"""A light client of the upscaler API (httpx only: no torch, no Ray): ``Client`` and
``AsyncClient`` (upscale with progress, status, cancel, health), typed errors, and
``verify_webhook`` for receivers of the service's webhooks. The ``upscaler`` command's
``upscale``, ``status``, ``cancel`` and ``health`` run on it (``upscaler_client.cli``)."""

from upscaler_client.client import AsyncClient, Client
from upscaler_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    UpscalerClientError,
    WaitTimeout,
    WebhookVerificationError,
)
from upscaler_client.models import Job, ProgressUpdate, Quality, UpscaleResult
from upscaler_client.options import parse_print_size
from upscaler_client.webhooks import verify_webhook

__all__ = [
    "ApiError", "AsyncClient", "BadRequest", "Client", "Conflict", "ConnectionFailed",
    "Forbidden", "InvalidRequest", "Job", "JobCancelled", "JobFailed", "NotFound",
    "PayloadTooLarge", "ProgressUpdate", "Quality", "RateLimited", "ServerError",
    "ServiceUnavailable", "Unauthorized", "UnsupportedMediaType", "UpscaleResult",
    "UpscalerClientError", "WaitTimeout", "WebhookVerificationError", "parse_print_size",
    "verify_webhook",
]
