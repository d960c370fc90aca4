"""Results served with HTTP byte ranges (serve_app/ranges.py): one range (`a-b`, `a-`, `-n`)
answers 206 with Content-Range and only those bytes, past the end 416, an If-Range that no
longer matches the whole file; every answer says Accept-Ranges: bytes."""

from __future__ import annotations

import pytest
from helpers.api import upload
from helpers.images import photo, png_bytes

from serve_app.ranges import requested_range
from upscaler.errors import RangeNotSatisfiable

GOOD = png_bytes(photo("rocket", (24, 24)))
TAGS = {"ETag": '"abc-1-100"', "Last-Modified": "Fri, 04 Dec 2026 03:00:00 GMT"}


@pytest.mark.parametrize("header,expected", [
    ("bytes=0-9", (0, 10)), ("bytes=90-", (90, 100)), ("bytes=-10", (90, 100)),
    ("bytes=-500", (0, 100)), ("bytes=95-500", (95, 100)), ("bytes=99-99", (99, 100)),
    # Ignored (the whole file), as the RFC allows: other units, several ranges, nonsense.
    ("items=0-9", None), ("bytes=0-1,5-6", None), ("bytes=9-3", None), ("bytes=x-", None),
    ("bytes=-", None), ("bytes=+1-2", None), ("bytes 0-9", None),
])
def test_one_range_is_read_from_the_header(header, expected):
    assert requested_range({"range": header}, 100, TAGS) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_a_range_past_the_end_is_not_satisfiable(header):
    with pytest.raises(RangeNotSatisfiable) as caught:
        requested_range({"range": header}, 100, TAGS)
    assert caught.value.headers == {"Content-Range": "bytes */100"}


def test_if_range_keeps_the_range_only_while_the_file_is_the_same():
    assert requested_range({"range": "bytes=0-9", "if-range": TAGS["ETag"]}, 100, TAGS) == (0, 10)
    assert requested_range({"range": "bytes=0-9", "if-range": TAGS["Last-Modified"]}, 100,
                           TAGS) == (0, 10)
    assert requested_range({"range": "bytes=0-9", "if-range": '"old"'}, 100, TAGS) is None
    assert requested_range({}, 100, TAGS) is None


def test_the_results_route_answers_ranges(bare_app):
    job = upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=2).json()
    whole = bare_app.get(job["outputUrl"])
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    size, etag = len(whole.content), whole.headers["etag"]
    assert int(whole.headers["content-length"]) == size

    part = bare_app.get(job["outputUrl"], headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == whole.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{size}"
    assert part.headers["content-length"] == "100" and part.headers["etag"] == etag
    assert part.headers["content-type"] == "image/png"

    tail = bare_app.get(job["outputUrl"], headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == whole.content[-16:]
    rest = bare_app.get(job["outputUrl"], headers={"Range": f"bytes={size - 5}-",
                                                   "If-Range": etag})
    assert rest.status_code == 206 and rest.content == whole.content[-5:]

    changed = bare_app.get(job["outputUrl"], headers={"Range": "bytes=0-9",
                                                      "If-Range": '"another-version"'})
    assert changed.status_code == 200 and changed.content == whole.content

    past = bare_app.get(job["outputUrl"], headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["error"] == "range_not_satisfiable"
