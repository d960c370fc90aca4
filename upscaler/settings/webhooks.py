"""Settings of webhook deliveries: signing, reach, timeouts, retries and queues."""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode


class WebhookFields(BaseModel):
    # --- webhooks ----------------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks signing secret (whsec_<base64>); without "
        "it a request naming webhook_url is refused.")
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Hosts or CIDRs a webhook may reach although they resolve to loopback, "
        "private, link-local or reserved addresses (refused otherwise).")
    webhook_timeout_s: float = Field(
        default=15, gt=0, description="One deadline for a whole delivery attempt (connect, "
        "send, answer): a receiver that answers slowly is cut off at it.")
    webhook_https_only: bool = Field(
        default=False, description="Refuse plain http:// webhook URLs (at submit, and before "
        "each delivery). On in the production configs; off for loopback receivers.")
    webhook_dns_timeout_s: float = Field(
        default=3, gt=0, description="A webhook host's DNS look-up (on its own small thread "
        "pool, webhook_dns_threads) gets this long.")
    webhook_dns_threads: int = Field(default=4, ge=1,
                                     description="Threads for webhook hosts' DNS look-ups.")
    webhook_max_pending_per_key: int = Field(
        default=100, ge=1, description="Webhook deliveries one key may have pending per Ingress "
        "replica; a request with a webhook_url past it gets 429 and nothing is stored.")
    webhook_concurrency_per_key: int = Field(
        default=4, ge=1, description="Of webhook_concurrency, how many one key's deliveries "
        "may hold at once: slow receivers of one key never hold every sender.")
    webhook_retry_for_s: float = Field(
        default=3600, ge=0, description="How long a failed delivery is retried (exponential "
        "backoff, honouring Retry-After) before it is given up.")
    webhook_backoff_s: float = Field(default=1, gt=0, description="The first retry's delay.")
    webhook_backoff_max_s: float = Field(default=300, gt=0, description="The longest delay.")
    webhook_concurrency: int = Field(default=8, ge=1,
                                     description="Deliveries in flight per Ingress replica.")
    webhook_queue_size: int = Field(
        default=1000, ge=1, description="Deliveries waiting per Ingress replica; past it a "
        "delivery is recorded as dropped.")
    webhook_progress_interval_s: float = Field(
        default=5, ge=0, description="At most one `progress` event per job this often.")

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value()
        try:
            key = base64.b64decode(text.removeprefix("whsec_") + "==")
        except ValueError:
            key = b""
        if not text.startswith("whsec_") or len(key) < 16:
            raise ValueError("webhook_secret must be a Standard Webhooks secret: whsec_ and the "
                             "base64 of 16-64 random bytes (24+ recommended)")
        return value
