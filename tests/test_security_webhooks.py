"""The webhook attacks against a real `upscaler serve` (keys on, receivers on 127.0.0.1
allowed): one key's receivers answer with gzip bombs (1 MB inflating to 1 GiB) and drip their
answers a byte a second; the Ingress grows by at most 300 MB, each drip is cut at the attempt's
deadline, and another key's webhook goes out meanwhile (today: GBs, and all eight senders held
for good)."""

from __future__ import annotations

import uuid

import pytest
from helpers.api import eventually, upload
from helpers.hostile_receivers import HostileReceiver
from helpers.images import photo, png_bytes
from helpers.processes import replica_pids
from helpers.webhook_receiver import WebhookReceiver

from upscaler.domain.keys import KeyStore

GOOD = png_bytes(photo("rocket", (24, 24)))
JOB = {"model": "tiny-rrdb", "upscale_factor": 2}
BOMBS, DRIPS = 3, 8  # DRIPS: as many as an Ingress has senders (webhook_concurrency)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmHWM")).split()[1]) / 1024


def deliveries(client, job_id: str, key: str) -> list[dict]:
    r = client.get(f"/api/status/{job_id}", headers={"Authorization": f"Bearer {key}"})
    return r.json()["webhooks"]["deliveries"]


@pytest.mark.slow
def test_hostile_receivers_cost_the_ingress_little_and_hold_no_other_keys_webhooks(
        service, client):
    keys = KeyStore(str(service.data_dir / "keys.json"))
    tag = uuid.uuid4().hex[:6]
    attacker_record, attacker = keys.create(f"webhook-attacker-{tag}")
    victim_record, victim = keys.create(f"webhook-victim-{tag}")
    hostile = HostileReceiver(drip_s=1.0, drips_first=DRIPS)  # then 410: no more retries
    rx = WebhookReceiver(victim_record.webhook_secret or "")
    (ingress,) = replica_pids("Ingress", service.data_dir)
    with open(f"/proc/{ingress}/clear_refs", "w") as f:
        f.write("5")  # the peak, from now
    before = peak_rss_mb(ingress)
    as_attacker = {"Authorization": f"Bearer {attacker}"}
    try:
        bombed = []
        for n in range(BOMBS):
            r = upload(client, GOOD, headers=as_attacker, webhook_url=hostile.url(f"/bomb{n}"),
                       wait=60, **JOB)
            assert r.status_code == 200, r.text
            bombed.append(r.json()["jobId"])
        eventually(lambda: all(d["state"] == "delivered" for j in bombed
                               for d in deliveries(client, j, attacker)), timeout=60)
        for n in range(DRIPS):
            r = upload(client, GOOD, headers=as_attacker, webhook_url=hostile.url(f"/drip{n}"),
                       wait=60, **JOB)
            assert r.status_code == 200, r.text
        eventually(lambda: hostile.dripping >= 1, timeout=30)
        r = upload(client, GOOD, headers={"Authorization": f"Bearer {victim}"},
                   webhook_url=rx.url("/victim"), wait=60, **JOB)
        assert r.status_code == 200, r.text
        eventually(lambda: len(rx.at("/victim")) == 1, timeout=30)  # while the drips drip
        assert rx.at("/victim")[0].verified
        # Each drip is cut at the attempt's deadline (5 s here), its retry answered 410.
        eventually(lambda: hostile.dripping == 0 and sum(
            hostile.count(f"/drip{n}") for n in range(DRIPS)) >= 2 * DRIPS, timeout=120)
        grown = peak_rss_mb(ingress) - before
        print(f"Ingress peak RSS grew {grown:.0f} MB")
        assert grown <= 300, f"the Ingress grew {grown:.0f} MB"
    finally:
        keys.revoke(attacker_record.key_id)  # anything of its still pending is dropped
        hostile.close()
        rx.close()
