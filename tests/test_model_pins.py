"""`models pull` takes hub files only at a pinned commit and keeps them only with the pinned
SHA-256: against a hub served here, on loopback."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from upscaler.commands.cli import main
from upscaler.commands.model_pull import CATALOG, COMMIT_RE, SHA256_RE, Pin, PullError, pull
from upscaler.settings import Settings

REPO_PATH = "Isi99999/Upscalers/4x-UltraSharp.pth"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = b"the weights the operator checked" * 100


class FakeHub(ThreadingHTTPServer):
    """The hub's file route (``/<repo>/resolve/<revision>/<path>``) for the files given."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.requests = files, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def _answer(self, body: bool) -> None:
        self.server.requests.append(self.path)
        repo_path, _, rest = self.path.lstrip("/").partition("/resolve/")
        revision, _, path = rest.partition("/")
        data = self.server.files.get(f"{repo_path}/{path}") if revision == COMMIT else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *_args) -> None:
        pass


def serve(files: dict[str, bytes], monkeypatch, cache: Path) -> Iterator[FakeHub]:
    hub = FakeHub(files)
    monkeypatch.setenv("UPSCALER_CACHE_DIR", str(cache))  # never the user's own cache
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Iterator[FakeHub]:
    yield from serve({REPO_PATH: WEIGHTS}, monkeypatch, tmp_path / "cache")


def settings_in(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, models_dir=tmp_path / "models",
                    cache_dir=tmp_path / "cache")


def test_a_file_with_the_pinned_sha256_is_installed(tmp_path, hub):
    pin = Pin(COMMIT, hashlib.sha256(WEIGHTS).hexdigest())
    [path] = pull(["4x-UltraSharp"], settings_in(tmp_path), log=lambda *_: None,
                  pins={REPO_PATH: pin})
    assert path.read_bytes() == WEIGHTS
    assert f"{pin.sha256}  4x-UltraSharp.pth" in (path.parent / "checksums.sha256").read_text()
    assert any(f"/resolve/{COMMIT}/" in r for r in hub.requests)  # at the pinned commit


def test_a_file_with_another_sha256_is_deleted_and_the_pull_fails(tmp_path, hub, capsys):
    expected = hashlib.sha256(b"what the operator checked").hexdigest()
    rc = main(["models", "pull", "4x-UltraSharp", "--data-dir", str(tmp_path),
               "--revision", COMMIT, "--sha256", expected])
    err = capsys.readouterr().err
    assert rc == 2 and "checksum mismatch for 4x-UltraSharp.pth" in err
    assert expected in err and "Nothing was installed" in err and "Traceback" not in err
    assert not (tmp_path / "models" / "upscale_models" / "4x-UltraSharp.pth").exists()
    kept = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == WEIGHTS]
    assert kept == []  # not in the hub cache either
    assert hub.requests  # it was fetched, then thrown away


def test_an_unpinned_hub_file_is_refused_with_how_to_pin_it(tmp_path, hub, capsys):
    assert main(["models", "pull", "4x-UltraSharp", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not pinned" in err and "--revision <commit> --sha256 <hex>" in err
    assert "--pins" in err and "copy a file you trust" in err
    assert hub.requests == []  # nothing fetched at a moving branch
    with pytest.raises(PullError, match="40-hex commit"):
        Pin("main", "0" * 64)


def test_every_catalog_file_is_pinned_or_refused():
    """No entry names a branch: each hub file has a commit and a SHA-256 (or neither, and is
    refused until the operator pins it); each wheel has its version and both hashes."""
    for entry in CATALOG.values():
        if entry.hf_repo:
            assert (entry.hf_revision is None) == (entry.sha256 is None), entry.name
            assert entry.hf_revision is None or COMMIT_RE.fullmatch(entry.hf_revision)
        if entry.wheel_requirement:
            assert "==" in entry.wheel_requirement
            assert SHA256_RE.fullmatch(entry.wheel_sha256 or "")
            assert SHA256_RE.fullmatch(entry.sha256 or "")
