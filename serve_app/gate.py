"""Who may send a body, decided from the headers alone: a pure ASGI middleware that answers a
request without a valid key, over its limit or past the upload slots before a byte of its
body is read. Design: docs/design/access.md
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import ExitStack
from typing import TypeVar
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.access import CALLER_STATE, RATE_LIMIT_STATE, charge_rate_limit, presented_key
from serve_app.gateway import QuotaClient
from serve_app.limits import KeylessSlots, UploadSlots, send_error
from upscaler.domain.keys import ANONYMOUS, Caller, KeyStore
from upscaler.errors import BadRequest, Forbidden, UpscalerError
from upscaler.ray_support import unwrap
from upscaler.settings import Settings

# Open to anyone, as before the gate: health's liveness, the web page, the docs and their
# files. Every other path (unknown ones too) needs a key when keys are on.
OPEN_PATHS = frozenset({"/", "/docs", "/openapi.json", "/api/health"})
OPEN_PREFIX = "/static/"
UPLOAD_PREFIX = "/api/upscale/"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
T = TypeVar("T")


def host_name(host: str) -> str | None:
    """The name in a Host header, lowercased, without its port or IPv6 brackets."""
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


def route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


class AccessGate:
    """ASGI middleware: the Host check, the key, and for uploads the rate limit and the
    upload slot, before the app runs; see the module's docstring."""

    def __init__(self, app: ASGIApp, settings: Settings, keys: KeyStore, quotas: QuotaClient,
                 uploads: UploadSlots):
        self.app, self.settings, self.keys, self.quotas = app, settings, keys, quotas
        self.uploads = uploads
        self.keys_on = settings.auth == "keys"
        self.keyless = KeylessSlots(settings.max_unauthenticated_requests)
        named = {host_name(h) or h for h in settings.allowed_hosts}
        self.allowed_hosts = named | LOOPBACK_NAMES if not self.keys_on else named or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with ExitStack() as held:  # the request's slots, held until the app has answered
            try:
                await self._admit(scope, held)
            except UpscalerError as error:
                # A key's over-limit answer keeps its connection (the client gets the answer
                # while it still sends); anyone else's is closed, the body never read.
                await send_error(send, error, close=CALLER_STATE not in scope.get("state", {}))
                return
            await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, held: ExitStack) -> None:
        headers = Headers(scope=scope)
        self._check_host(headers)
        path = route_path(scope)
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIX)
        who = await self._caller(headers, optional=open_path)
        if who is None:  # an open path, without a valid key
            held.enter_context(self.keyless.take())
            return
        state = scope.setdefault("state", {})
        state[CALLER_STATE] = who
        if scope["method"] == "POST" and path.startswith(UPLOAD_PREFIX):
            held.enter_context(self.uploads.take(who.key_id))
            if who.key_id is not None:
                state[RATE_LIMIT_STATE] = await _unwrapped(
                    charge_rate_limit(self.settings, self.quotas, who))

    def _check_host(self, headers: Headers) -> None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            raise BadRequest("this service does not answer to that Host; use a name in "
                             "allowed_hosts (loopback when keys are off)", code="untrusted_host")
        origin = headers.get("origin")
        if not self.keys_on and origin is not None and (
                urlsplit(origin).netloc.lower() != host.lower()):
            raise Forbidden("a request from another site's page is refused while keys are "
                            "off", code="cross_site_request")

    async def _caller(self, headers: Headers, optional: bool) -> Caller | None:
        """The caller (keys off: anyone); None for an open path without a valid key; raises
        Unauthorized or Forbidden for any other path."""
        if not self.keys_on:
            return ANONYMOUS
        key = presented_key(headers)
        keys = self.keys
        try:
            # No key: refused without a thread, so a flood of keyless requests costs no more.
            return await asyncio.to_thread(keys.authenticate, key) if key else \
                keys.authenticate(key)
        except UpscalerError:
            if optional:
                return None
            raise


async def _unwrapped(call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as exc:  # a quota keeper's error arrives wrapped by Ray
        cause = unwrap(exc)
        if isinstance(cause, UpscalerError):
            raise cause from None
        raise
