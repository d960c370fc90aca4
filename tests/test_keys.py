"""API keys: shown once, kept hashed, checked in constant time, revoked without a restart,
managed with `upscaler keys`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from upscaler.commands.cli import main
from upscaler.domain.keys import KeyLimits, KeyStore
from upscaler.errors import Forbidden, Unauthorized


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(str(tmp_path / "keys.json"), reload_s=0.0)


def test_create_authenticate_revoke(store, tmp_path):
    record, key = store.create("backend", KeyLimits(rate_limit_per_minute=5))
    assert key.startswith(f"upk_{record.key_id}_")
    stored = (tmp_path / "keys.json").read_text()
    assert key.split("_", 2)[2] not in stored and record.sha256 in stored  # only the hash
    caller = store.authenticate(key)
    assert caller.key_id == record.key_id and caller.limits.rate_limit_per_minute == 5
    store.revoke("backend")
    with pytest.raises(Forbidden) as err:
        store.authenticate(key)
    assert err.value.code == "revoked_api_key"


@pytest.mark.parametrize("presented", [None, "", "nonsense", "upk_000000000000_" + "A" * 43,
                                       "Bearer upk_x", "upk_" + "0" * 12 + "_short"])
def test_no_key_or_not_a_key_is_401(store, presented):
    store.create("backend")
    with pytest.raises(Unauthorized):
        store.authenticate(presented)


def test_a_wrong_secret_for_a_real_id_is_401(store):
    record, key = store.create("backend")
    forged = f"upk_{record.key_id}_{'B' * 43}"
    assert forged != key
    with pytest.raises(Unauthorized):
        store.authenticate(forged)


def test_a_running_service_sees_new_and_revoked_keys(tmp_path):
    """Another process (the `upscaler keys` command) changes the file; the service's store
    re-reads it within its reload interval."""
    serving = KeyStore(str(tmp_path / "keys.json"), reload_s=0.2)
    admin = KeyStore(str(tmp_path / "keys.json"))
    with pytest.raises(Unauthorized):
        serving.authenticate("upk_" + "0" * 12 + "_" + "A" * 43)
    _, key = admin.create("new")
    time.sleep(0.25)
    assert serving.authenticate(key).name == "new"
    admin.revoke("new")
    time.sleep(0.25)
    with pytest.raises(Forbidden):
        serving.authenticate(key)


def test_names_are_unique_among_active_keys(store):
    store.create("backend")
    with pytest.raises(Exception, match="exists"):
        store.create("backend")
    store.revoke("backend")
    store.create("backend")  # a revoked name can be used again


def test_keys_cli_prints_the_key_alone_on_its_last_line(tmp_path, capsys):
    keys_file = str(tmp_path / "k" / "keys.json")
    assert main(["keys", "create", "backend-prod", "--keys-file", keys_file, "--rate-limit",
                 "30", "--gcp-project", "my-proj"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    record = KeyStore(keys_file).authenticate(key)
    assert record.limits.rate_limit_per_minute == 30 and record.limits.gcp_projects == [
        "my-proj"]
    assert main(["keys", "list", "--keys-file", keys_file]) == 0
    listing = capsys.readouterr().out
    assert "backend-prod" in listing and key.split("_", 2)[2] not in listing
    assert main(["keys", "revoke", "backend-prod", "--keys-file", keys_file]) == 0
    assert main(["keys", "revoke", "backend-prod", "--keys-file", keys_file]) == 2
    assert "no active key" in capsys.readouterr().err
    data = json.loads(Path(keys_file).read_text())
    assert data["keys"][0]["revoked_at"] is not None
    assert main(["keys", "create", "bad/name", "--keys-file", keys_file]) == 2
