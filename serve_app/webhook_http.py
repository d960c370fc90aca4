"""One webhook attempt over HTTP: the Standard Webhooks signature, the POST to an address the
SSRF guard checked (never resolved again), one deadline, and what the answer means.
Design: docs/design/webhooks.md
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from upscaler.domain.webhooks import WebhookDelivery, WebhookState, WebhookTarget

# Of a receiver's answer, only the status and headers count; a small body is read so its
# connection can be reused, anything longer is cut off unread.
MAX_ANSWER_BYTES = 4096


class AttemptTimeout(Exception):
    """The attempt passed its deadline (connect, send and answer together)."""


def retry_after_s(header: str | None) -> float | None:
    """``Retry-After``: seconds, or an HTTP date."""
    if not header:
        return None
    if header.strip().isdigit():
        return float(header.strip())
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(header)
        return max(0.0, when.timestamp() - time.time())
    return None


def new_client(timeout_s: float, concurrency: int) -> httpx.AsyncClient:
    # No proxies from the environment, no redirects: the guard decides where it goes.
    return httpx.AsyncClient(follow_redirects=False, trust_env=False,
                             timeout=httpx.Timeout(timeout_s),
                             limits=httpx.Limits(max_connections=concurrency))


async def post_signed(client: httpx.AsyncClient, signer: Webhook, target: WebhookTarget,
                      msg_id: str, body: bytes, deadline_s: float) -> httpx.Response:
    """POST ``body`` signed afresh (a new timestamp each attempt, the same ``webhook-id``),
    all within ``deadline_s``; the answer's status and headers, and at most
    ``MAX_ANSWER_BYTES`` of its body, read raw."""
    now = datetime.now(timezone.utc)
    signature = signer.sign(msg_id, now, body.decode())
    url = httpx.URL(target.url)
    headers = {"content-type": "application/json", "user-agent": "upscaler-webhooks",
               "accept-encoding": "identity",
               "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature, "host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        async with asyncio.timeout(deadline_s):
            # The checked addresses, in turn, not the name: the name is not resolved again.
            for n, address in enumerate(target.addresses):
                request = client.build_request("POST", url.copy_with(host=address),
                                               content=body, headers=headers,
                                               extensions=extensions)
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError:
                    if n == len(target.addresses) - 1:
                        raise
                    continue
                try:
                    await _read_some(response)
                finally:
                    await response.aclose()
                return response
    except TimeoutError as exc:
        raise AttemptTimeout(f"no complete answer within {deadline_s:g} s (the attempt's "
                             "deadline)") from exc
    raise AssertionError("a target has at least one address")


async def _read_some(response: httpx.Response) -> None:
    """Up to MAX_ANSWER_BYTES of the raw body (never decompressed), then stop."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= MAX_ANSWER_BYTES:
            return


def next_delay(attempts: int, retry_after: float | None, backoff_s: float,
               backoff_max_s: float) -> float:
    """The wait before the next attempt: exponential backoff; a receiver's Retry-After is
    honoured within [the backoff, its maximum] (no hot loop on ``0``, no hour-long hold)."""
    backoff = min(backoff_max_s, backoff_s * 2 ** (attempts - 1))
    if retry_after is None:
        return backoff
    return min(backoff_max_s, max(backoff, retry_after))


def judge(hook: WebhookState, delivery: WebhookDelivery,
          response: httpx.Response) -> float | None:
    """Record the receiver's answer in the delivery; the Retry-After asked for, if any."""
    delivery.status_code = response.status_code
    if response.is_success:
        delivery.state, delivery.last_error = "delivered", None
        delivery.delivered_at = time.time()
    elif response.status_code == 410:  # the receiver wants no more of this job
        delivery.state, hook.disabled = "disabled", True
        delivery.last_error = "the receiver answered 410 Gone: webhook disabled"
    elif response.is_redirect:
        delivery.state = "failed"
        delivery.last_error = (f"the receiver answered {response.status_code} (to "
                               f"{response.headers.get('location', '?')}); redirects are not "
                               "followed")
    else:
        delivery.last_error = f"the receiver answered {response.status_code}"
        return retry_after_s(response.headers.get("retry-after"))
    return None
