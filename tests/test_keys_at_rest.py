"""The keys file at rest: owner-only (it holds every key's webhook signing secret), tightened
when found otherwise, and changed under a lock (or a conditional write) so that concurrent
`upscaler keys` commands never undo each other."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.processes import REPO

from upscaler.commands.cli import main
from upscaler.domain.keys import KeyStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_keys_file_is_owner_only(tmp_path):
    keys_file = tmp_path / "state" / "keys.json"
    assert main(["keys", "create", "backend", "--keys-file", str(keys_file)]) == 0
    assert mode(keys_file) == 0o600 and mode(keys_file.parent) == 0o700
    assert KeyStore(str(keys_file)).revoke("backend").revoked
    assert mode(keys_file) == 0o600  # every write, not the first only
    assert not [p for p in keys_file.parent.iterdir() if p.suffix == ".tmp"]


def test_an_existing_readable_keys_file_is_tightened_with_a_log_line(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    keys_file = folder / "keys.json"
    keys_file.write_text(json.dumps({"keys": []}))
    keys_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="upscaler.domain.keys"):
        assert main(["keys", "list", "--data-dir", str(folder)]) == 0
    assert mode(keys_file) == 0o600 and mode(folder) == 0o700
    [line] = [r.getMessage() for r in caplog.records if "owner-only" in r.getMessage()]
    assert str(keys_file) in line and "644 -> 600" in line and "755 -> 700" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upscaler.domain.keys"):
        assert main(["keys", "list", "--data-dir", str(folder)]) == 0
    assert not caplog.records  # nothing to say once it is owner-only


def _keys(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upscaler.commands.cli", "keys", *args,
                           "--data-dir", str(data_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow  # 32 CLI processes: some 10 s of CPU
def test_concurrent_creates_and_revokes_lose_nothing(tmp_path):
    """16 `keys revoke` of existing keys race 16 `keys create` of new ones, as real
    processes, 8 at a time: every revoke holds and every new key is there."""
    n = 16
    store = KeyStore(str(tmp_path / "keys.json"))
    for i in range(n):
        store.create(f"old-{i}")
    commands = [c for i in range(n) for c in (("create", f"new-{i}"), ("revoke", f"old-{i}"))]
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda c: _keys(*c, data_dir=tmp_path), commands))
    assert [d.stderr for d in done if d.returncode] == []
    records = {r.name: r for r in store.list()}
    assert sorted(n for n, r in records.items() if r.revoked) == sorted(
        f"old-{i}" for i in range(n))  # no revoke undone
    assert sorted(n for n, r in records.items() if not r.revoked) == sorted(
        f"new-{i}" for i in range(n))  # no key lost
    assert mode(tmp_path / "keys.json") == 0o600


def test_object_storage_changes_are_conditional_and_retried():
    """On object storage there is no lock: each change is a conditional write of the version
    it read, read and applied again when another writer got there first."""
    url = f"memory://keys-at-rest-{uuid.uuid4().hex}/keys.json"
    store = KeyStore(url)
    for i in range(20):
        store.create(f"old-{i}")

    def change(i: int) -> None:
        own = KeyStore(url)  # as separate commands would
        own.create(f"new-{i}")
        own.revoke(f"old-{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(change, range(20)))
    records = store.list()
    assert sorted(r.name for r in records if r.revoked) == sorted(f"old-{i}" for i in range(20))
    assert sorted(r.name for r in records if not r.revoked) == sorted(
        f"new-{i}" for i in range(20))


def test_an_admin_key_is_made_with_admin_and_listed_as_one(tmp_path, capsys):
    keys_file = str(tmp_path / "keys.json")
    assert main(["keys", "create", "ops", "--admin", "--keys-file", keys_file]) == 0
    assert main(["keys", "create", "backend", "--keys-file", keys_file]) == 0
    ops_key = capsys.readouterr().out.split("\n")[0]
    assert "created admin key" in ops_key
    store = KeyStore(keys_file)
    assert [(r.name, r.admin) for r in store.list()] == [("ops", True), ("backend", False)]
    assert main(["keys", "list", "--keys-file", keys_file]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert " admin " in rows["ops"] and " tenant " in rows["backend"]


@pytest.mark.slow
def test_the_running_services_keys_file_is_owner_only(service):
    """The real service's keys file (made by `upscaler keys create`, read by the Ingress)."""
    assert mode(service.data_dir / "keys.json") == 0o600
    assert mode(service.data_dir) == 0o700
