"""A JSON answer, in Serve's proxies, for a request whose replica died before it answered.

Ray Serve 2.60's HTTP proxy (``HTTPProxy.send_request_to_replica`` in
``ray/serve/_private/proxy.py``) catches the ``RayActorError`` (``ActorDiedError``,
``ActorUnavailableError``) of a replica killed mid-request, maps it to a 500
(``get_http_response_status`` in ``ray/serve/_private/http_util.py``) and sends nothing:
``send_http_response_on_exception`` only answers 408, 429 and 503. uvicorn then answers the
empty exchange with its own plain-text ``500 Internal Server Error``. This middleware sees that
no answer started and sends a 503 ``replica_lost`` with ``Retry-After`` instead: the request may
or may not have been taken, and repeating it with the same ``Idempotency-Key`` is safe. The
proxy's own plain-text 5xx answers (a deployment that failed to deploy, a full queue) become
the service's JSON error body too; the Ingress answers every error in JSON itself, so a
plain-text 5xx is never the app's.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.limits import send_error
from upscaler.errors import ServiceUnavailable, UpscalerError, UpstreamError, UpstreamTimeout

logger = logging.getLogger("ray.serve")

REPLICA_LOST_RETRY_S = 1  # another replica takes the repeat, or Serve starts one
PROXY_BUSY_RETRY_S = 2  # the proxy's own 503 (no Retry-After): its deployment is not up
# Serve's own routes (health for load balancers, the route table) keep the proxy's answers.
SERVE_ROUTES_PREFIX = "/-/"
# The proxy's plain-text 5xx answers as the hierarchy's classes (their status kept).
PROXY_ERRORS: dict[int, type[UpscalerError]] = {
    502: UpstreamError, 503: ServiceUnavailable, 504: UpstreamTimeout}


def replica_lost() -> ServiceUnavailable:
    return ServiceUnavailable("the replica taking this request was lost before it answered",
                              code="replica_lost", retry_after=REPLICA_LOST_RETRY_S)


def _proxy_error(start: Message) -> UpscalerError | None:
    """The JSON error for the proxy's own plain-text 5xx answer ``start``; None for anything
    else (JSON, an image, an event stream, any status under 500)."""
    status = start["status"]
    headers = Headers(raw=start.get("headers", []))
    if status < 500 or not headers.get("content-type", "").startswith("text/plain"):
        return None
    if status == 500:  # a replica error the proxy has no answer for (Serve 2.60 sends none)
        return replica_lost()
    kind = PROXY_ERRORS.get(status, UpscalerError)
    retry_after = headers.get("retry-after", "")
    return kind("the service's proxy could not pass the request on",
                retry_after=int(retry_after) if retry_after.isdigit()
                else PROXY_BUSY_RETRY_S if kind is ServiceUnavailable else None)


class ReplicaLostAnswers:
    """ASGI middleware for Serve's proxies (``serve_app.proxy``): a JSON 503 ``replica_lost``
    with ``Retry-After`` where the proxy would leave a request unanswered, and the service's
    JSON error body in place of the proxy's plain-text 5xx answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(SERVE_ROUTES_PREFIX):
            await self.app(scope, receive, send)
            return
        started = disconnected = False
        replaced: UpscalerError | None = None  # the proxy's plain-text answer, not passed on

        async def watched_send(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start" and not started:
                started = True
                replaced = _proxy_error(message)
            if replaced is None:
                await send(message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await send_error(send, replaced, close=False)

        async def watched_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, watched_receive, watched_send)
        except Exception:
            if started or disconnected:
                raise
            logger.exception("the proxy failed before it answered %s", scope.get("path"))
            await send_error(send, UpscalerError("the proxy failed"), close=False)
            return
        # Nothing answered, the client still there: the replica died under the request (a
        # client gone is no loss, and Serve cancels its request then).
        if not started and not disconnected:
            await send_error(send, replica_lost(), close=False)
