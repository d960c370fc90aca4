"""A request whose replica died under it (serve_app/replica_loss.py), in Serve's proxy: Ray
Serve 2.60's proxy sends nothing when the replica dies (a ``RayActorError`` maps to a 500 it
never sends) and uvicorn answers its plain-text 500; with the proxy's middlewares, a JSON 503
``replica_lost`` with ``Retry-After`` that says a repeat with the same Idempotency-Key is safe.
The proxy's own plain-text 5xx get the JSON error body too; the app's answers pass unchanged.
Run in a real uvicorn, with the middlewares applied by Serve's own function."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from helpers.processes import free_port
from ray.serve._private.http_util import _apply_middlewares
from starlette.types import Receive, Scope, Send

from serve_app.proxy import proxy_middlewares

PLAIN_500 = b"Internal Server Error"


async def replica_died(scope: Scope, receive: Receive, send: Send) -> None:
    """What Serve's ``HTTPProxy.__call__`` does when the replica dies mid-request: reads the
    request for the replica, then ends without sending anything."""
    while (await receive()).get("more_body"):
        pass


def answers(status: int, body: bytes, content_type: bytes, *extra: tuple[bytes, bytes]
            ) -> Callable:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), *extra]})
        await send({"type": "http.response.body", "body": body})
    return app


@contextmanager
def served(app: Callable, middlewares: bool = True) -> Iterator[str]:
    """``app`` behind uvicorn (as Serve's proxy runs it), with the proxy's middlewares."""
    wrapped = _apply_middlewares(app, proxy_middlewares() if middlewares else [])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(wrapped, host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def post(url: str) -> httpx.Response:
    return httpx.post(f"{url}/api/upscale/esrgan", files={"file": ("a.png", b"x" * 1000)},
                      headers={"Idempotency-Key": "k1"}, timeout=10)


def test_without_the_middleware_uvicorn_answers_a_plain_500():
    """Today's answer, as seen under load: this is what the middleware replaces."""
    with served(replica_died, middlewares=False) as url:
        r = post(url)
    assert r.status_code == 500 and r.content == PLAIN_500
    assert r.headers["content-type"].startswith("text/plain")


def test_a_replica_lost_mid_request_is_a_json_503_with_retry_after():
    with served(replica_died) as url:
        r = post(url)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1" and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["error"] == "replica_lost" and body["error_id"]
    assert "same Idempotency-Key" in body["message"] and body["detail"] == body["message"]


def test_the_exact_plain_500_is_replaced_too():
    """A proxy (or a later Serve) that sends uvicorn's own plain 500 itself."""
    app = answers(500, PLAIN_500, b"text/plain; charset=utf-8", (b"content-length", b"21"))
    with served(app) as url:
        r = post(url)
    assert r.status_code == 503 and r.json()["error"] == "replica_lost"
    assert r.headers["retry-after"] == "1"


def test_the_proxys_plain_503_becomes_json_with_its_retry_after():
    app = answers(503, b"Request dropped: queue full", b"text/plain; charset=utf-8",
                  (b"retry-after", b"7"))
    with served(app) as url:
        r = post(url)
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert r.json()["error"] == "unavailable" and "queue" not in r.text


@pytest.mark.parametrize("app", [
    answers(500, b'{"error":"internal_error","message":"m","detail":"m","jobId":null}',
            b"application/json"),
    answers(503, b'{"error":"engine_busy","message":"m","detail":"m","jobId":null}',
            b"application/json", (b"retry-after", b"3")),
    answers(200, b"\x89PNG", b"image/png"),
], ids=["app-json-500", "app-json-503", "image"])
def test_the_apps_answers_pass_unchanged(app):
    with served(app) as url:
        r = post(url)
    assert r.status_code in (200, 500, 503)
    if r.status_code != 200:
        assert r.json()["message"] == "m"
    assert r.headers.get("retry-after") in (None, "3")


def test_serves_own_routes_keep_their_answers():
    app = answers(503, b"This node is being drained.", b"text/plain; charset=utf-8")
    with served(app) as url:
        r = httpx.get(f"{url}/-/healthz", timeout=10)
    assert r.status_code == 503 and r.text == "This node is being drained."


def test_a_client_gone_gets_no_answer_and_no_error_logged(caplog):
    """Serve cancels a request whose client left and sends nothing: that is no loss."""
    sent = []

    async def run() -> None:
        messages = iter([{"type": "http.request", "body": b"x", "more_body": True},
                         {"type": "http.disconnect"}])

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message)

        app = _apply_middlewares(replica_died, proxy_middlewares())
        scope = {"type": "http", "method": "POST", "path": "/api/upscale/esrgan",
                 "headers": [], "scheme": "http", "query_string": b""}
        await app(scope, receive, send)

    asyncio.run(run())
    assert sent == [] and "replica_lost" not in caplog.text
