"""Webhooks, the parts without HTTP: the subscription and deliveries in the job record, the
events a request may ask for, and the SSRF guard every webhook URL passes (at submit and before
each delivery). Design: docs/design/webhooks.md
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from upscaler.errors import InvalidRequest

# The one list of event names: records, the sender, parse_events and the API schema use it.
WebhookEvent = Literal["started", "progress", "completed", "failed", "cancelled"]
EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)
JOB_END_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed", "cancelled")  # = JobStates
DEFAULT_EVENTS = JOB_END_EVENTS
MAX_URL_LENGTH = 2000
MAX_DELIVERIES_KEPT = 20  # per job, the latest; progress events replace each other

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookDeliveryStatus(BaseModel):
    """One event sent (or being sent) to the job's webhook, as the status answer shows it."""

    id: str  # the webhook-id header: the same for each retry of this message
    event: WebhookEvent
    state: Literal["pending", "delivered", "failed", "dropped", "disabled"] = "pending"
    attempts: int = 0
    status_code: int | None = None  # the last answer's
    last_error: str | None = None
    created_at: float
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None
    delivered_at: float | None = None


class WebhookDelivery(WebhookDeliveryStatus):
    """A delivery as the job record keeps it: also what any Ingress needs to go on with it
    when the one sending it died (``serve_app.webhooks``)."""

    # The body, kept while pending so a retry from another replica sends the same message.
    payload: str | None = None
    # Who sends it, until when: another sender may claim it (a conditional write) after.
    owner: str | None = None
    claimed_until: float | None = None

    @property
    def done(self) -> bool:
        return self.state != "pending"

    def finish(self) -> None:
        """An ended delivery needs neither its body nor its claim any more."""
        if self.done:
            self.payload = self.owner = self.claimed_until = None
            self.next_attempt_at = None

    def claimable_by(self, owner: str, now: float) -> bool:
        """Pending, and ``owner``'s, nobody's, or its sender's claim ran out (it died)."""
        return not self.done and (self.owner in (None, owner)
                                  or (self.claimed_until or 0.0) < now)

    def begin_attempt(self, owner: str, now: float, claim_s: float, retry_for_s: float,
                      disabled: bool) -> bool:
        """Claim the next attempt for ``owner`` (its claim covers the attempt's time), or
        end the delivery: the webhook was disabled, or its retries are spent. True: send."""
        if disabled:
            self.state = "disabled"
        elif now - self.created_at > retry_for_s:
            self.state = "failed"
            self.last_error = (f"{self.last_error or 'not delivered'}; gave up after "
                               f"{self.attempts} attempt(s) in {retry_for_s:.0f} s")
        else:
            self.owner, self.claimed_until = owner, now + claim_s
            self.attempts += 1
            self.last_attempt_at, self.next_attempt_at = now, None
            return True
        self.finish()
        return False


class WebhookStatus(BaseModel):
    """A job's webhook as the status answer shows it."""

    url: str
    events: list[WebhookEvent]
    disabled: bool = False
    deliveries: list[WebhookDeliveryStatus] = Field(default_factory=list)


class WebhookState(WebhookStatus):
    """A job's webhook in its record: where, which events, whether the receiver disabled it
    (410), the deliveries, and whose secret signs them."""

    deliveries: list[WebhookDelivery] = Field(default_factory=list)  # type: ignore[assignment]
    # The API key whose secret signs (read when sending, so a rotation applies to the next
    # attempt on any replica); None: the server's UPSCALER_WEBHOOK_SECRET. Never the secret.
    signing_key_id: str | None = None

    def wants(self, event: WebhookEvent) -> bool:
        return not self.disabled and event in self.events

    def find(self, delivery_id: str) -> WebhookDelivery | None:
        return next((d for d in self.deliveries if d.id == delivery_id), None)

    @property
    def pending(self) -> list[WebhookDelivery]:
        return [d for d in self.deliveries if not d.done]

    def add(self, delivery: WebhookDelivery) -> None:
        """Keep the latest deliveries: an unfinished progress delivery is replaced by the
        next one, and the oldest finished ones go first past the bound."""
        if delivery.event == "progress":
            self.deliveries = [d for d in self.deliveries
                               if not (d.event == "progress" and d.state == "pending")]
        self.deliveries.append(delivery)
        while len(self.deliveries) > MAX_DELIVERIES_KEPT:
            done = next((d for d in self.deliveries if d.state != "pending"), self.deliveries[0])
            self.deliveries.remove(done)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_events(text: str | None) -> list[WebhookEvent]:
    """``webhook_events``: a comma-separated subset of EVENTS (default: the job's end)."""
    if text is None or not text.strip():
        return list(DEFAULT_EVENTS)
    asked = {e.strip().lower() for e in text.split(",") if e.strip()}
    unknown = sorted(asked - set(EVENTS))
    if unknown:
        raise InvalidRequest(f"unknown webhook event(s) {', '.join(unknown)}; webhook_events "
                             f"takes a comma-separated subset of {', '.join(EVENTS)}",
                             code="invalid_webhook_events")
    return [e for e in EVENTS if e in asked]


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the addresses it may be sent to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


class AllowList:
    """``webhook_allowed_hosts``: host names (exact, case-insensitive) and IP networks."""

    def __init__(self, entries: list[str]):
        self.hosts: set[str] = set()
        self.networks: list[IpNetwork] = []
        for entry in (e.strip().lower().strip("[]") for e in entries):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.rstrip("."))

    def names(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def covers(self, address: IpAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def refused_reason(address: IpAddress) -> str | None:
    """Why an address is not a webhook's to reach, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (
            address.teredo[1] if address.teredo else None)
        if embedded is not None:
            reason = refused_reason(embedded)
            return f"{reason} (inside {address})" if reason else None
    for flag in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(address, f"is_{flag}"):
            return f"{address} is a {flag.replace('_', '-')} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str, https_only: bool = False) -> tuple[str, str, int]:
    """Scheme, host and port of a webhook URL, or InvalidRequest saying what is wrong
    (``https_only``: plain http is refused too)."""
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _refused(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refused(f"only http and https URLs are allowed, not {scheme or 'none'!r}")
    if https_only and scheme != "https":
        raise _refused("only https URLs are allowed on this server (UPSCALER_WEBHOOK_HTTPS_ONLY)")
    if not parts.hostname:
        raise _refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise _refused("credentials in the URL are not allowed (they would show in the job "
                       "status); authenticate the request by its signature")
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def resolve_target(url: str, allowed: AllowList, https_only: bool = False) -> WebhookTarget:
    """Check a webhook URL and resolve its host; every address must be public unless the
    allow-list names the host or covers the address. Raises InvalidRequest with the reason."""
    scheme, host, port = check_url(url, https_only)
    try:
        literal: IpAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise _refused(f"the host {host!r} does not resolve ({exc})") from exc
        found = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                                   for info in infos))
    if not found:
        raise _refused(f"the host {host!r} has no address")
    host_allowed = allowed.names(host)
    for address in found:
        reason = refused_reason(address)
        if reason and not host_allowed and not allowed.covers(address):
            raise _refused(f"{host} resolves to a refused address: {reason} (the operator can "
                           "allow it in UPSCALER_WEBHOOK_ALLOWED_HOSTS)")
    return WebhookTarget(url.strip(), scheme, host, port, tuple(str(a) for a in found))


def _refused(reason: str) -> InvalidRequest:
    return InvalidRequest(f"webhook_url refused: {reason}", code="webhook_url_refused")
