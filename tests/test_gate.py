"""The access gate (serve_app/gate.py) driven as ASGI in this process, around the real app and
services with keys on: a request without a valid key, over its key's rate limit or past the
upload slots is answered before the app reads a byte of its body; requests without a key have
capped slots of their own; with keys off only loopback Host names and same-site pages pass."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace

import pytest
from fastapi.testclient import TestClient
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import LocalGraph
from pydantic import ValidationError

from serve_app.api import create_app
from serve_app.gate import AccessGate
from upscaler.domain.keys import KeyLimits, KeyStore
from upscaler.settings import Settings

BOUNDARY = "gateboundary"
PREAMBLE = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            'filename="p.png"\r\nContent-Type: image/png\r\n\r\n').encode()


@dataclass
class Keyed:
    graph: LocalGraph
    keys: dict[str, str]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, models_root) -> Keyed:
    """The services with keys on and small caps: 3 uploads (2 per key), 2 keyless requests."""
    data = tmp_path_factory.mktemp("gate-data")
    store = KeyStore(str(data / "keys.json"))
    keys = {name: store.create(name, limits)[1] for name, limits in {
        "alice": KeyLimits(), "bob": KeyLimits(), "carol": KeyLimits(),
        "revoked": KeyLimits(), "two-a-minute": KeyLimits(rate_limit_per_minute=2)}.items()}
    store.revoke("revoked")
    settings = settings_from_env(TEST_LIMITS, data_dir=data, models_dir=models_root,
                                 auth="keys", device="cpu", max_concurrent_uploads=3,
                                 max_concurrent_uploads_per_key=2,
                                 max_unauthenticated_requests=2)
    return Keyed(LocalGraph(settings), keys)


def gate_around(app, services) -> AccessGate:
    """The gate as create_app installs it, around another app."""
    return AccessGate(app, settings=services.settings, keys=services.keys,
                      quotas=services.quotas, uploads=services.uploads)


@dataclass
class Exchange:
    """One request driven by hand: what the app was handed of its body, what it answered."""

    body_messages_read: int = 0
    sent: list[dict] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}


def scope(method: str, path: str, key: str | None = None, host: str = "localhost",
          length: int = 1_000_000) -> dict:
    headers = [(b"host", host.encode()), (b"content-length", str(length).encode()),
               (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": ("localhost", 80)}


async def drive(app, request: dict, exchange: Exchange, hold: bool = False) -> None:
    """The request against ``app``, a body that trickles forever (``hold``: each read waits
    for ``exchange.release`` first)."""

    async def receive() -> dict:
        if hold:
            await exchange.release.wait()
        exchange.body_messages_read += 1
        await asyncio.sleep(0.01)
        return {"type": "http.request", "more_body": True,
                "body": PREAMBLE if exchange.body_messages_read == 1 else b"x"}

    async def send(message: dict) -> None:
        exchange.sent.append(message)

    await app(request, receive, send)


def answered(app, request: dict) -> Exchange:
    exchange = Exchange()

    async def main() -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # still reading: no answer before
            await asyncio.wait_for(drive(app, request, exchange), 2)

    asyncio.run(main())
    return exchange


@pytest.mark.parametrize("who,status,code", [
    (None, 401, "missing_api_key"), ("upk_000000000000_" + "A" * 43, 401, "invalid_api_key"),
    ("revoked", 403, "revoked_api_key")])
def test_a_request_without_a_valid_key_is_answered_before_its_body(keyed, who, status, code):
    app = create_app(keyed.graph.services)
    key = keyed.keys.get(who, who)
    for method, path in [("POST", "/api/upscale/esrgan"), ("POST", "/api/upscale/flux"),
                         ("GET", "/api/status/" + "0" * 32), ("POST", "/api/nowhere")]:
        exchange = answered(app, scope(method, path, key))
        assert exchange.status == status, (method, path, exchange.sent)
        assert exchange.body_messages_read == 0, (method, path)
        assert exchange.headers["connection"] == "close"
        assert f'"error":"{code}"'.encode() in exchange.sent[-1]["body"]
    # A valid key's upload is read (the count above counts what a read takes).
    exchange = answered(app, scope("POST", "/api/upscale/esrgan", keyed.keys["alice"]))
    assert exchange.body_messages_read > 10


def test_an_upload_is_charged_once_and_refused_over_the_rate_before_its_body(keyed):
    key = keyed.keys["two-a-minute"]
    client = TestClient(create_app(keyed.graph.services), base_url="http://localhost")
    answers = [client.post("/api/upscale/esrgan", headers={"Authorization": f"Bearer {key}"},
                           files={"file": ("p.png", png_bytes(photo("rocket", (8, 8))))},
                           data={"upscale_facter": "2"}) for _ in range(2)]
    # The gate took the token; the route's dependency did not take a second one.
    assert [a.status_code for a in answers] == [422, 422]
    assert [a.headers["ratelimit"].split(";")[1] for a in answers] == ["r=1", "r=0"]
    exchange = answered(create_app(keyed.graph.services),
                        scope("POST", "/api/upscale/esrgan", key))
    assert exchange.status == 429 and exchange.body_messages_read == 0
    assert int(exchange.headers["retry-after"]) > 0
    assert exchange.headers["ratelimit"].startswith('"default";r=0;')


def test_uploads_hold_their_slots_per_key_and_per_replica(keyed):
    app = create_app(keyed.graph.services)
    slots = keyed.graph.services.uploads

    async def main() -> None:
        held = [Exchange() for _ in range(3)]
        tasks = [asyncio.create_task(drive(app, scope("POST", "/api/upscale/esrgan",
                                                      keyed.keys[who]), ex, hold=True))
                 for who, ex in zip(("alice", "alice", "bob"), held, strict=True)]
        await asyncio.sleep(0.3)
        assert slots.in_use == 3
        for who, status in [("alice", 429), ("carol", 503)]:
            refused = Exchange()
            await asyncio.wait_for(drive(app, scope("POST", "/api/upscale/esrgan",
                                                    keyed.keys[who]), refused), 2)
            assert refused.status == status and refused.body_messages_read == 0
            # A key's refusal leaves its connection open: it gets the answer while sending.
            assert "connection" not in refused.headers
        # Status is no upload: it passes while every upload slot is taken.
        status = Exchange()
        await asyncio.wait_for(drive(app, scope("GET", "/api/status/" + "0" * 32,
                                                keyed.keys["carol"]), status), 5)
        assert status.status == 404
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert slots.in_use == 0

    asyncio.run(main())


async def answer_ok(scope_, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_requests_without_a_key_have_capped_slots_of_their_own(keyed):
    async def main() -> None:
        gate_open = asyncio.Event()

        async def slow_app(scope_, receive, send) -> None:
            await gate_open.wait()
            await answer_ok(scope_, receive, send)

        gate = gate_around(slow_app, keyed.graph.services)
        open_ones = [Exchange() for _ in range(2)]
        tasks = [asyncio.create_task(drive(gate, scope("GET", "/api/health"), ex))
                 for ex in open_ones]
        await asyncio.sleep(0.1)
        past_cap = Exchange()
        await asyncio.wait_for(drive(gate, scope("GET", "/api/health"), past_cap), 1)
        assert past_cap.status == 503 and past_cap.headers["retry-after"]
        # With a key, health is not counted among them: it gets through.
        keyed_health = asyncio.create_task(drive(
            gate, scope("GET", "/api/health", keyed.keys["alice"]), Exchange()))
        await asyncio.sleep(0.1)
        assert gate.keyless.in_use == 2 and not keyed_health.done()
        gate_open.set()
        await asyncio.gather(*tasks, keyed_health)
        assert [ex.status for ex in open_ones] == [200, 200] and gate.keyless.in_use == 0

    asyncio.run(main())


@pytest.mark.parametrize("host,status", [
    ("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("LOCALHOST", 200),
    ("attacker.example:8000", 400), ("127.0.0.1.attacker.example", 400), ("", 400)])
def test_with_keys_off_only_loopback_host_names_are_answered(bare_app, host, status):
    r = bare_app.get("/api/health", headers={"Host": host})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"] == "untrusted_host"


def test_with_keys_off_another_sites_page_cannot_post(bare_app):
    def post(origin: str):
        return bare_app.post("/api/upscale/esrgan", headers={"Origin": origin},
                             data={"upscale_facter": "2"})

    refused = post("http://attacker.example")
    assert refused.status_code == 403 and refused.json()["error"] == "cross_site_request"
    assert post("null").status_code == 403
    assert post("http://localhost:3000").status_code == 403  # another port: another site
    assert post("http://localhost").status_code == 422  # the page itself: on to the form


def test_with_keys_on_any_host_unless_allowed_hosts_names_them(keyed):
    services = keyed.graph.services
    key = keyed.keys["alice"]
    assert answered(gate_around(answer_ok, services),
                    scope("GET", "/api/models", key, host="upscaler.example.com")).status == 200
    named = replace(services, settings=services.settings.model_copy(
        update={"allowed_hosts": ["upscaler.example.com"]}))
    for host, status in [("upscaler.example.com:443", 200), ("other.example", 400)]:
        assert answered(gate_around(answer_ok, named),
                        scope("GET", "/api/models", key, host=host)).status == status, host


def test_uploads_streams_and_keyless_requests_leave_slots_for_health_and_status():
    Settings(max_concurrent_uploads=100, events_max_streams=30, max_unauthenticated_requests=38)
    with pytest.raises(ValidationError, match="for health and status"):
        Settings(max_concurrent_uploads=100, events_max_streams=30,
                 max_unauthenticated_requests=39)
