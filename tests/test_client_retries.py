"""The client's retries of an upscale POST whose server process was lost under it
(upscaler_client/core.py): a dropped connection, Serve's proxy's plain 500, a 503
``replica_lost``, a load balancer's 502/504 are repeated with the same Idempotency-Key, so the
service answers the job the first attempt made; the API's own errors are not repeated."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from upscaler_client import AsyncClient, Client
from upscaler_client.errors import ServerError

# uvicorn's answer when Serve's proxy sends nothing for a replica that died.
PLAIN_500 = (b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
             b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error")
REPLICA_LOST = {"error": "replica_lost", "message": "lost; repeat it with the same "
                "Idempotency-Key", "detail": "lost", "jobId": None, "error_id": "abc"}


class Idempotent:
    """A service that makes a job per new Idempotency-Key (the repeat answers it) and loses
    its answer as told: ``failures`` in order, one per attempt ("drop": the connection
    closed with no answer; "plain500"; "lost503"), then 202."""

    def __init__(self, *failures: str) -> None:
        self.failures = list(failures)
        self.keys: list[str] = []
        self.jobs: dict[str, str] = {}

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers["Content-Length"]))
        key = handler.headers["Idempotency-Key"]
        self.keys.append(key)
        job_id = self.jobs.setdefault(key, uuid.uuid4().hex)  # taken in, answered or not
        failure = self.failures.pop(0) if self.failures else None
        if failure == "drop":
            handler.close_connection = True
            return
        if failure == "plain500":
            handler.wfile.write(PLAIN_500)
            handler.close_connection = True
            return
        status, body = ((503, REPLICA_LOST) if failure == "lost503"
                        else (202, {"jobId": job_id, "status": "queued"}))
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if status == 503:
            handler.send_header("Retry-After", "0")
        handler.end_headers()
        handler.wfile.write(data)


@contextmanager
def serving(service: Idempotent) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            service.answer(self)

        def log_message(self, *_) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_post_lost_mid_request_is_repeated_with_its_key_and_makes_one_job(monkeypatch):
    monkeypatch.setattr("upscaler_client.core.backoff", lambda attempt: 0.01)
    service = Idempotent("drop", "plain500", "lost503")
    updates = []
    with serving(service) as url, Client(url) as client:
        job = client.submit(b"image", on_progress=updates.append, factor=2)
    assert len(service.keys) == 4 and len(set(service.keys)) == 1
    assert list(service.jobs.values()) == [job.id]  # one job, answered on the last attempt
    reasons = [u.message for u in updates if u.stage == "retrying"]
    assert [r.split(";")[0] for r in reasons] == [
        "RemoteProtocolError", "500 http_error", "503 replica_lost"]


def test_the_callers_key_is_sent_and_the_async_client_retries_too(monkeypatch):
    monkeypatch.setattr("upscaler_client.core.backoff", lambda attempt: 0.01)
    service = Idempotent("drop")

    async def run(url: str):
        async with AsyncClient(url) as client:
            return await client.submit(b"image", idempotency_key="order-7", factor=2)

    with serving(service) as url:
        job = asyncio.run(run(url))
    assert service.keys == ["order-7", "order-7"] and service.jobs == {"order-7": job.id}


@pytest.mark.parametrize(("status", "body", "tries"), [
    (502, b"<html>Bad Gateway</html>", 3), (504, b"upstream timed out", 3),
    (500, b"Internal Server Error", 3),
    (500, b'{"error":"internal_error","message":"m"}', 1),  # the API's own: a fault
    (502, b'{"error":"vertex_permission","message":"m"}', 1),
])
def test_a_proxys_5xx_is_retried_and_the_apis_own_is_not(monkeypatch, status, body, tries):
    monkeypatch.setattr("upscaler_client.core.backoff", lambda attempt: 0.0)
    seen = []

    def route(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["idempotency-key"])
        kind = "application/json" if body.startswith(b"{") else "text/plain"
        return httpx.Response(status, content=body, headers={"content-type": kind})

    with Client("http://upscaler.test", transport=httpx.MockTransport(route),
                max_retries=2) as client, pytest.raises(ServerError) as err:
        client.submit(b"image")
    assert len(seen) == tries and len(set(seen)) == 1 and err.value.status_code == status
