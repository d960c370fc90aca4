"""The request limits as an ASGI middleware, driven message by message: what a body may
cost, when an upload is too slow, and that a finished upload may wait for its answer."""

from __future__ import annotations

import asyncio
import contextlib

from serve_app.limits import MULTIPART_SLACK, RequestLimits


async def app_reading_everything(scope, receive, send):
    """Reads the body to its end, then waits for the client to go (as Serve's replica does
    while it makes the answer), then answers 200."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def run(messages, max_bytes=1000, idle_s=0.2, total_s=5.0, headers=(), **rate):
    """Feed ``messages`` (a message, or a number of seconds to stall) to the middleware;
    returns the status it answered and how many body messages the client got to send."""
    sent = []
    fed = 0

    async def receive():
        nonlocal fed
        while fed < len(messages):
            item = messages[fed]
            fed += 1
            if isinstance(item, (int, float)):
                await asyncio.sleep(item)
                continue
            return item
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": list(headers)}
    middleware = RequestLimits(app_reading_everything, max_bytes, idle_s, total_s, **rate)

    async def main():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(middleware(scope, receive, send), 2)

    asyncio.run(main())
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return starts[0]["status"], fed


def body(n: int, more: bool = True) -> dict:
    return {"type": "http.request", "body": b"x" * n, "more_body": more}


def test_a_body_within_the_limit_passes():
    assert run([body(500), body(400, more=False)])[0] == 200


def test_a_body_over_the_limit_is_cut_there():
    limit = 1000 + MULTIPART_SLACK
    status, fed = run([body(limit // 2), body(limit // 2), body(limit // 2),
                       *[body(limit) for _ in range(50)]])
    assert status == 413 and fed == 3  # the rest was never asked for


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    status, fed = run([body(10, more=False)],
                      headers=[(b"content-length", str(10**9).encode())])
    assert status == 413 and fed == 0


def test_a_stalled_body_gets_408():
    assert run([body(10), 0.5, body(10, more=False)])[0] == 408


def test_a_body_under_the_minimum_rate_gets_408_after_the_grace():
    # 10 bytes every 0.1 s (~100 B/s) against a 1000 B/s floor from 0.3 s on: each message
    # comes well within the idle limit, and the trickle is cut at the grace's end.
    trickle = [item for _ in range(15) for item in (body(10), 0.1)]
    rate = {"min_rate": 1000, "min_rate_after_s": 0.3}
    status, fed = run(trickle, max_bytes=10**6, **rate)
    assert status == 408 and fed <= 12  # ~4 messages, each followed by its pause
    # The same pace within the grace, or a body over the floor, passes.
    assert run([*trickle[:4], body(10, more=False)], **rate)[0] == 200
    assert run([item for _ in range(8) for item in (body(200), 0.1)] + [body(1, more=False)],
               max_bytes=10**6, **rate)[0] == 200


def test_a_finished_upload_may_wait_for_its_answer():
    """After the body's end, waiting for a disconnect is not a stalled upload."""
    async def answer_late(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        watch = asyncio.ensure_future(receive())  # a replica watching for the client to go
        await asyncio.sleep(0.5)  # the job runs
        watch.cancel()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = []

    async def main():
        messages = [body(10, more=False)]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await RequestLimits(answer_late, 1000, 0.1, 5.0)({"type": "http", "headers": []},
                                                         receive, send)

    asyncio.run(main())
    assert sent[0]["status"] == 200


def test_oversized_headers_get_431():
    assert run([body(1, more=False)], headers=[(b"x-big", b"a" * 20_000)])[0] == 431
