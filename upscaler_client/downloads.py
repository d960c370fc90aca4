"""A result downloaded into a file, resumable: the body goes into a part file beside the output
(no half-written result is ever left under its name), and a download broken off goes on from
the part's end with ``Range`` and ``If-Range`` (the result's ETag, else its Last-Modified), so
a gigapixel print lost at 90 % costs the last 10 %. A result that changed meanwhile is
answered whole (200) and written anew; a range that does not continue the part is refused."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class Partial:
    """What a broken download left: ``size`` bytes of the result in ``part``, still the
    result's while ``validator`` matches it."""

    part: Path
    size: int
    validator: str


@dataclass
class Download:
    """GET the result at ``url``; answer: (response, bytes or None). With ``path`` the body is
    streamed into a part file beside it, then renamed to it. The same step is yielded again
    for each try: ``partial`` says where it goes on, kept up to date as the driver writes."""

    url: str
    path: Path | None
    partial: Partial | None = field(default=None, init=False)

    def headers(self) -> dict[str, str]:
        if self.partial is None:
            return {}
        return {"Range": f"bytes={self.partial.size}-", "If-Range": self.partial.validator}

    def open_part(self, response: httpx.Response) -> IO[bytes]:
        """The file this response's body goes into: the part, appended to, when it answers
        the rest of it (206 from the part's end); else a new part (a first download, or the
        result changed and came whole)."""
        assert self.path is not None
        if response.status_code == 206:
            match = CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
            if self.partial is None or match is None or int(match[1]) != self.partial.size:
                self.discard()
                raise httpx.RemoteProtocolError("a 206 that does not continue the part file")
            return open(self.partial.part, "ab")  # noqa: SIM115 - the driver closes it
        self.discard()
        validator = response.headers.get("etag") or response.headers.get("last-modified") or ""
        if response.headers.get("content-encoding", "identity") != "identity":
            validator = ""  # a proxy compressed it: ranges would count other bytes than these
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
                                    dir=self.path.parent)
        self.partial = Partial(Path(part), 0, validator)
        return os.fdopen(fd, "wb")

    def wrote(self, n: int) -> None:
        assert self.partial is not None
        self.partial.size += n

    def finish(self) -> None:
        """The whole body is in the part: it becomes the output."""
        assert self.partial is not None and self.path is not None
        os.replace(self.partial.part, self.path)
        self.partial = None

    def resumable(self) -> Partial | None:
        """After a broken download: the part to go on from, or None (nothing written, or no
        validator to check it against; its file is then removed)."""
        if self.partial is not None and (self.partial.size == 0 or not self.partial.validator):
            self.discard()
        return self.partial

    def discard(self) -> None:
        if self.partial is not None:
            self.partial.part.unlink(missing_ok=True)
            self.partial = None
