"""A request's webhook, checked at submit before anything is stored: a signing secret to
sign it with, the events asked for, the key's pending deliveries under their cap, and the URL
through the SSRF guard (``serve_app.webhook_guard``)."""

from __future__ import annotations

import asyncio

from serve_app.forms import CommonUpscaleForm
from serve_app.webhooks import WebhookSender
from upscaler.domain.keys import Caller, KeyStore
from upscaler.domain.webhooks import WebhookState, parse_events
from upscaler.errors import InvalidRequest, RateLimited
from upscaler.settings import Settings

PENDING_RETRY_AFTER_S = 30  # a key past its pending deliveries: they end in seconds to minutes


async def subscription(settings: Settings, form: CommonUpscaleForm, sender: WebhookSender,
                       keys: KeyStore | None = None,
                       who: Caller | None = None) -> WebhookState | None:
    """A request's webhook, checked (422 with the reason; 429 past the key's pending
    deliveries) before anything is stored. Signed with the caller's key's secret when it has
    one, else with the server's."""
    if not form.webhook_url:
        if form.webhook_events:
            raise InvalidRequest("webhook_events needs a webhook_url",
                                 code="invalid_webhook_events")
        return None
    key_id = who.key_id if who is not None else None
    has_own = key_id is not None and keys is not None and bool(
        await asyncio.to_thread(keys.webhook_secret, key_id))
    if not has_own and settings.webhook_secret is None:
        if key_id is not None:
            raise InvalidRequest(
                "this API key has no webhook signing secret and the server has no "
                "UPSCALER_WEBHOOK_SECRET; the operator can give the key one (`upscaler keys "
                f"rotate-webhook-secret {key_id}`), or send the request without webhook_url",
                code="webhooks_not_configured")
        raise InvalidRequest("webhooks are not configured on this server (no "
                             "UPSCALER_WEBHOOK_SECRET); send the request without webhook_url",
                             code="webhooks_not_configured")
    events = parse_events(form.webhook_events)
    if sender.pending(key_id) >= settings.webhook_max_pending_per_key:
        raise RateLimited(
            f"this key has {settings.webhook_max_pending_per_key} webhook deliveries pending "
            "(UPSCALER_WEBHOOK_MAX_PENDING_PER_KEY); retry once some are delivered or given up, "
            "or send the request without webhook_url", code="too_many_pending_webhooks",
            retry_after=PENDING_RETRY_AFTER_S)
    target = await sender.resolver.check_at_submit(form.webhook_url)
    return WebhookState(url=target.url, events=events,
                        signing_key_id=key_id if has_own else None)
