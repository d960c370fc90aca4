"""The request limits, applied in Ray Serve's HTTP proxies as well as in the Ingress: only the
proxy can stop an oversized or endless upload before it is read. Design: docs/design/access.md
"""

from __future__ import annotations

from starlette.middleware import Middleware

from serve_app.headers import HideServeRoutes, ResponseHeaders
from serve_app.limits import RequestLimits, request_limits
from serve_app.replica_loss import ReplicaLostAnswers
from upscaler.settings import Settings

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve_app.proxy:proxy_middlewares"
# What the proxies must know, copied into their environment by `upscaler serve`.
PROXY_SETTINGS = ("max_upload_mb", "upload_idle_timeout_s", "upload_timeout_s",
                  "upload_min_bytes_per_s", "upload_min_rate_after_s", "hsts_max_age_s")


def proxy_middlewares() -> list[Middleware]:
    """Innermost first (Serve wraps them in this order): the limits, Serve's route table
    hidden, a JSON answer where a replica died under the request (and for the proxy's own
    plain-text 5xx), then the headers of every answer, the proxy's own (404, 503) included."""
    settings = Settings()
    return [Middleware(RequestLimits, **request_limits(settings)),
            Middleware(HideServeRoutes),
            Middleware(ReplicaLostAnswers),
            # HTTPS is known from the request: the proxy is what serves TLS.
            Middleware(ResponseHeaders, hsts_max_age_s=settings.hsts_max_age_s)]


def proxy_environment(settings: Settings) -> dict[str, str]:
    """The variables that give Serve's proxies this service's request limits."""
    return {CALLBACK_ENV: CALLBACK, **{f"UPSCALER_{name.upper()}": str(getattr(settings, name))
                                       for name in PROXY_SETTINGS}}
