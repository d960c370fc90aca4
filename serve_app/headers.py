"""Response headers every answer gets, as pure ASGI middleware (nothing is buffered, so event
streams flow as they are written): JSON and event streams are never stored by a cache and vary
with the caller's key, and HTTPS answers carry HSTS. Used in the Ingress app and in Serve's
proxies (``serve_app.proxy``), which also hide Serve's route table."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Answers about a caller's own jobs: a shared or browser cache must neither keep them nor hand
# one key's answer to another.
NO_STORE_TYPES = ("application/json", "application/problem+json", "text/event-stream")
VARY = ("Authorization", "X-API-Key")
# Serve's proxy lists every application's route and deployment at this path, to anyone.
SERVE_ROUTES = "/-/routes"


def _merged_vary(current: str | None) -> str:
    tokens = [t.strip() for t in (current or "").split(",") if t.strip()]
    if "*" in tokens:
        return "*"
    have = {t.lower() for t in tokens}
    return ", ".join(tokens + [v for v in VARY if v.lower() not in have])


class ResponseHeaders:
    """``Cache-Control: no-store`` on JSON and event streams, ``Vary: Authorization,
    X-API-Key`` on every answer, and ``Strict-Transport-Security`` on every answer sent over
    HTTPS (or from a service told it serves TLS) when ``hsts_max_age_s`` is above 0. A header
    already set by an inner layer (HSTS, Vary tokens) is kept, never doubled."""

    def __init__(self, app: ASGIApp, hsts_max_age_s: int = 0, tls: bool = False) -> None:
        self.app, self.tls = app, tls
        self.hsts = f"max-age={hsts_max_age_s}" if hsts_max_age_s > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hsts = self.hsts if self.tls or scope.get("scheme") == "https" else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                kind = headers.get("content-type", "").split(";")[0].strip().lower()
                if kind in NO_STORE_TYPES:
                    headers["Cache-Control"] = "no-store"
                headers["Vary"] = _merged_vary(headers.get("vary"))
                if hsts and "strict-transport-security" not in headers:
                    headers["Strict-Transport-Security"] = hsts
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HideServeRoutes:
    """404 for Serve's route table (``/-/routes``) in the proxies: it names the deployment
    graph to anyone. ``/-/healthz`` (load balancers, KubeRay) stays."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/") == SERVE_ROUTES:
            answer = JSONResponse({"error": "not_found", "message": "Not Found",
                                   "detail": "Not Found", "jobId": None}, status_code=404)
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
