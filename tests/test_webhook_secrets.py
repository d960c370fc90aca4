"""Per-key webhook secrets: each API key signs its jobs' webhooks with its own whsec_ secret
(shown once by `upscaler keys create`, rotated by `upscaler keys rotate-webhook-secret`); keys
made before keys had one fall back to UPSCALER_WEBHOOK_SECRET; the job record names the key,
never the secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.api import eventually, upload
from helpers.config import TEST_LIMITS, settings_from_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client
from helpers.webhook_receiver import Received, WebhookReceiver
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from upscaler.commands.cli import main
from upscaler.domain.keys import KeyStore
from upscaler.domain.webhooks import new_webhook_secret

GOOD = png_bytes(photo("rocket", (24, 24)))
JOB = {"model": "tiny-rrdb", "upscale_factor": 2}
SERVER_SECRET = new_webhook_secret()


def verifies(secret: str, got: Received) -> bool:
    try:
        Webhook(secret).verify(got.raw, got.headers)
        return True
    except WebhookVerificationError:
        return False


def keyed_settings(data: Path, models_root: Path, **fields):
    return settings_from_env(
        TEST_LIMITS, data_dir=data, models_dir=models_root, sync_wait_s=60, device="cpu",
        auth="keys", webhook_allowed_hosts="127.0.0.1", webhook_backoff_s=0.1, **fields)


@pytest.fixture(scope="module")
def receiver():
    rx = WebhookReceiver(SERVER_SECRET)  # verifies with the server's: keys' deliveries fail it
    yield rx
    rx.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, models_root):
    data = tmp_path_factory.mktemp("keyed-webhooks")
    admin = KeyStore(str(data / "keys.json"))
    made = {name: admin.create(name) for name in ("alice", "bob")}
    # A key from before keys had webhook secrets: its record has none.
    legacy, legacy_key = admin.create("legacy")
    raw = json.loads((data / "keys.json").read_text())
    for entry in raw["keys"]:
        if entry["key_id"] == legacy.key_id:
            del entry["webhook_secret"]
    (data / "keys.json").write_text(json.dumps(raw))
    made["legacy"] = (legacy, legacy_key)
    with local_client(keyed_settings(data, models_root, webhook_secret=SERVER_SECRET)) as c:
        c.graph.services.keys.reload_s = 0.0  # a rotation shows at once, not in 2 s
        c.admin, c.made = admin, made
        yield c


def deliver(client, who: str, receiver: WebhookReceiver, path: str) -> Received:
    """One job of ``who``'s, its completed event received (once)."""
    headers = {"Authorization": f"Bearer {client.made[who][1]}"}
    r = upload(client, GOOD, headers=headers, webhook_url=receiver.url(path), **JOB)
    assert r.status_code == 200, r.text
    eventually(lambda: len(receiver.at(path)) == 1)
    status = client.get(f"/api/status/{r.json()['jobId']}", headers=headers).json()
    assert set(status["webhooks"]) == {"url", "events", "disabled", "deliveries"}
    assert "payload" not in status["webhooks"]["deliveries"][0]  # the record's internals
    record = client.graph.services.store.load(r.json()["jobId"])
    assert record.webhooks.signing_key_id == (None if who == "legacy" else
                                              client.made[who][0].key_id)
    assert "whsec_" not in record.model_dump_json()  # the record names the key only
    return receiver.at(path)[0]


def test_each_key_signs_with_its_own_secret(keyed, receiver):
    alice, bob = (keyed.made[n][0].webhook_secret for n in ("alice", "bob"))
    assert alice.startswith("whsec_") and bob.startswith("whsec_") and alice != bob
    got = deliver(keyed, "alice", receiver, "/alice")
    assert verifies(alice, got) and not verifies(SERVER_SECRET, got) and not verifies(bob, got)
    assert not got.verified  # the receiver holding the server's secret rejects it
    got = deliver(keyed, "bob", receiver, "/bob")
    assert verifies(bob, got) and not verifies(alice, got) and not verifies(SERVER_SECRET, got)


def test_a_rotated_secret_signs_the_next_deliveries(keyed, receiver):
    old = keyed.made["alice"][0].webhook_secret
    new = keyed.admin.rotate_webhook_secret("alice").webhook_secret
    assert new and new != old
    got = deliver(keyed, "alice", receiver, "/rotated")
    assert verifies(new, got) and not verifies(old, got)


def test_a_key_without_a_secret_falls_back_to_the_server_secret(keyed, receiver):
    assert keyed.made["legacy"][0].webhook_secret is not None  # as created; stripped on disk
    assert keyed.admin.list()[-1].webhook_secret is None  # the old record still loads
    got = deliver(keyed, "legacy", receiver, "/legacy")
    assert got.verified and verifies(SERVER_SECRET, got)


def test_no_secret_anywhere_is_refused_at_submit(tmp_path, models_root):
    admin = KeyStore(str(tmp_path / "keys.json"))
    own, own_key = admin.create("own")
    _, legacy_key = admin.create("legacy")
    raw = json.loads((tmp_path / "keys.json").read_text())
    raw["keys"][1].pop("webhook_secret")
    (tmp_path / "keys.json").write_text(json.dumps(raw))
    with local_client(keyed_settings(tmp_path, models_root)) as client:  # no server secret
        r = upload(client, GOOD, headers={"Authorization": f"Bearer {legacy_key}"},
                   webhook_url="http://127.0.0.1:9/hook", **JOB)
        assert r.status_code == 422 and r.json()["error"] == "webhooks_not_configured"
        assert "rotate-webhook-secret" in r.json()["message"]
        rx = WebhookReceiver(own.webhook_secret)
        try:  # a key with its own secret needs no server secret
            r = upload(client, GOOD, headers={"Authorization": f"Bearer {own_key}"},
                       webhook_url=rx.url("/own"), **JOB)
            assert r.status_code == 200, r.text
            eventually(lambda: len(rx.at("/own")) == 1)
            assert rx.at("/own")[0].verified
        finally:
            rx.close()


def test_keys_cli_shows_the_webhook_secret_once_and_rotates_it(tmp_path, capsys):
    keys_file = str(tmp_path / "keys.json")
    assert main(["keys", "create", "backend", "--keys-file", keys_file]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    key = lines[-1]
    (secret,) = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("webhook secret: ")]
    record = KeyStore(keys_file).list()[0]
    assert secret.startswith("whsec_") and record.webhook_secret == secret
    assert KeyStore(keys_file).authenticate(key).name == "backend"
    assert main(["keys", "list", "--keys-file", keys_file]) == 0
    listing = capsys.readouterr().out
    assert secret not in listing and " own " in listing  # whether it has one, never which
    assert main(["keys", "rotate-webhook-secret", record.key_id, "--keys-file", keys_file]) == 0
    rotated = capsys.readouterr().out.strip().splitlines()[-1]
    assert rotated.startswith("whsec_") and rotated != secret
    assert KeyStore(keys_file).webhook_secret(record.key_id) == rotated
    assert KeyStore(keys_file).authenticate(key).name == "backend"  # the key itself unchanged
    assert main(["keys", "rotate-webhook-secret", "nobody", "--keys-file", keys_file]) == 2
    assert "no active key" in capsys.readouterr().err
