"""What a webhook may still reach and who may still sign it, checked where the sender cannot
be held up: webhook hosts are looked up on their own small thread pool with a timeout (a slow
or hostile DNS server holds those threads, never the default pool the rest of the Ingress
uses), and a revoked key's deliveries are dropped, never signed with its secret."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from upscaler.domain.keys import KeyStore
from upscaler.domain.webhooks import AllowList, WebhookTarget, resolve_target
from upscaler.errors import InvalidRequest
from upscaler.settings import Settings


class DeliveryDropped(Exception):
    """The delivery is not to be sent at all (its key was revoked): dropped, not retried."""


class WebhookResolver:
    """The SSRF guard (``upscaler.domain.webhooks.resolve_target``) on a pool of its own."""

    def __init__(self, settings: Settings):
        self.allowed = AllowList(settings.webhook_allowed_hosts)
        self.https_only = settings.webhook_https_only
        self.timeout_s = settings.webhook_dns_timeout_s
        self.threads = settings.webhook_dns_threads
        self._pool: ThreadPoolExecutor | None = None

    async def resolve(self, url: str) -> WebhookTarget:
        """The checked target; InvalidRequest with the reason, TimeoutError when the
        look-up took longer than ``webhook_dns_timeout_s``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhook-dns")
        loop = asyncio.get_running_loop()
        # A look-up past its time goes on in its thread (getaddrinfo cannot be stopped), but
        # only this pool waits for it.
        return await asyncio.wait_for(loop.run_in_executor(
            self._pool, resolve_target, url, self.allowed, self.https_only), self.timeout_s)

    async def check_at_submit(self, url: str) -> WebhookTarget:
        try:
            return await self.resolve(url)
        except TimeoutError as exc:
            raise InvalidRequest(f"webhook_url refused: looking up its host took longer than "
                                 f"{self.timeout_s:g} s", code="webhook_url_refused") from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def revoked_key(keys: KeyStore | None, *key_ids: str | None) -> str | None:
    """The first of ``key_ids`` that names a revoked key (the keys file as last re-read)."""
    if keys is None:
        return None
    records = keys.records()
    return next((k for k in key_ids if k is not None and k in records and records[k].revoked),
                None)
