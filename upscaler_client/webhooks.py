"""Checking a webhook the service sent: Standard Webhooks signatures (``webhook-id``,
``webhook-timestamp``, ``webhook-signature`` headers; HMAC-SHA256 over id, timestamp and
body; timestamps older or newer than 5 minutes refused), with the ``standardwebhooks``
package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibError

from upscaler_client.errors import WebhookVerificationError


def verify_webhook(payload: bytes | str, headers: Mapping[str, str], secret: str) -> Any:
    """The webhook's JSON body when its signature is valid for ``secret`` (``whsec_...``, the
    service's ``UPSCALER_WEBHOOK_SECRET``); raises ``WebhookVerificationError`` otherwise.

    Pass the body exactly as received (bytes), before any JSON parsing."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    try:
        return Webhook(secret).verify(payload, lowered)
    except _LibError as exc:
        raise WebhookVerificationError(str(exc) or "invalid webhook signature") from exc
    except ValueError as exc:  # a secret that is not base64
        raise WebhookVerificationError(f"cannot use this secret: {exc}") from exc
