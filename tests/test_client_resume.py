"""The client's downloads into a file go on where a broken connection left them
(upscaler_client/downloads.py), against the real results route (the in-process graph): a
``Range`` from the part's end with ``If-Range``, the rest appended (206); a result whose
validator no longer matches comes whole (200) and is written anew; no part file is left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from helpers.api import upload
from helpers.images import photo, png_bytes

from upscaler_client import AsyncClient, Client
from upscaler_client.errors import ConnectionFailed
from upscaler_client.models import Job

GOOD = png_bytes(photo("astronaut", (48, 40)))


class _Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The first ``keep`` bytes of a body, then the connection drops."""

    def __init__(self, body: bytes, keep: int):
        self.body, self.keep = body, keep

    def __iter__(self) -> Iterator[bytes]:
        yield self.body[:self.keep]
        raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body[:self.keep]
        raise httpx.ReadError("connection reset by peer")


class Flaky(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The app's own transport, with the first ``breaks`` result bodies cut after ``keep``
    bytes each (and, ``changes``, their ETag as if the file changed meanwhile); every result
    request's Range and answer are kept in ``seen``."""

    def __init__(self, app: httpx.Client, breaks: int, keep: int, changes: bool = False):
        self.app, self.breaks, self.keep, self.changes = app, breaks, keep, changes
        self.seen: list[tuple[str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Through the app's test client (its own httpx): a GET, its headers, the answer.
        answer = self.app.get(str(request.url), headers=dict(request.headers))
        headers = dict(answer.headers)
        if request.url.path.startswith("/api/results/"):
            self.seen.append((request.headers.get("range"), answer.status_code))
            if self.breaks:
                self.breaks -= 1
                if self.changes:
                    headers["etag"] = '"an-older-version"'
                return httpx.Response(answer.status_code, headers=headers,
                                      stream=_Broken(answer.content, self.keep))
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await asyncio.to_thread(self.handle_request, request)


@pytest.fixture(scope="module")
def done(bare_app) -> tuple[Job, bytes]:
    body = upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=4).json()
    whole = bare_app.get(body["outputUrl"])
    assert whole.status_code == 200 and len(whole.content) > 3000
    return Job.from_api(body), whole.content


def parts_beside(path) -> list:
    return [p for p in path.parent.iterdir() if p.name.endswith(".part")]


def test_a_broken_download_goes_on_from_where_it_stopped(bare_app, done, tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr("upscaler_client.core.backoff", lambda attempt: 0.0)
    job, whole = done
    flaky = Flaky(bare_app, breaks=2, keep=1000)
    with Client(str(bare_app.base_url), transport=flaky) as client:
        path = client.download(job, tmp_path / "print.png")
    assert path.read_bytes() == whole and not parts_beside(path)
    # Each try asks for the rest only, and gets it as a range: 1000 bytes, then 2000.
    assert flaky.seen == [(None, 200), ("bytes=1000-", 206), ("bytes=2000-", 206)]


def test_a_changed_result_is_downloaded_anew(bare_app, done, tmp_path, monkeypatch):
    monkeypatch.setattr("upscaler_client.core.backoff", lambda attempt: 0.0)
    job, whole = done
    flaky = Flaky(bare_app, breaks=1, keep=1000, changes=True)
    with Client(str(bare_app.base_url), transport=flaky) as client:
        path = client.download(job, tmp_path / "print.png")
    # The part's validator no longer matches: the service answers the whole file.
    assert path.read_bytes() == whole and not parts_beside(path)
    assert flaky.seen == [(None, 200), ("bytes=1000-", 200)]


def test_the_async_client_resumes_too_and_gives_up_without_leaving_a_part(
        bare_app, done, tmp_path, monkeypatch):
    monkeypatch.setattr("upscaler_client.core.backoff", lambda attempt: 0.0)
    job, whole = done

    async def download(flaky: Flaky, name: str, **options):
        async with AsyncClient(str(bare_app.base_url), transport=flaky, **options) as client:
            return await client.download(job, tmp_path / name)

    flaky = Flaky(bare_app, breaks=1, keep=1500)
    path = asyncio.run(download(flaky, "a.png"))
    assert path.read_bytes() == whole and flaky.seen[-1] == ("bytes=1500-", 206)
    # Nothing ever comes through: the retries run out, and no part is left behind.
    dead = Flaky(bare_app, breaks=10, keep=0)
    with pytest.raises(ConnectionFailed):
        asyncio.run(download(dead, "b.png", max_retries=2))
    assert len(dead.seen) == 3 and not (tmp_path / "b.png").exists()
    assert not parts_beside(path)


def test_a_download_stopped_while_it_waits_to_go_on_leaves_no_part(bare_app, done, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C (or a timeout) during the backoff after a break: the part file goes too."""
    job, _ = done

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("upscaler_client.client.time.sleep", interrupted)
    with Client(str(bare_app.base_url), transport=Flaky(bare_app, breaks=1, keep=1000)
                ) as client, pytest.raises(KeyboardInterrupt):
        client.download(job, tmp_path / "print.png")
    assert list(tmp_path.iterdir()) == []
