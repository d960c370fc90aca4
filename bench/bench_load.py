"""Load with API keys: 200 upscale requests from 20 clients at once, some keys with small
quotas, against a real `upscaler serve` on 127.0.0.1, while 400 connections without a key
send upload bodies a byte every 3 s (and come back when answered). Checks that every accepted
job completes, every refused request got 429 or 503 with Retry-After, none was lost (accepted
+ refused = sent, results in storage = completed jobs), and measures a keyed /api/health
while the replicas are busy (every probe must answer 200).

    .venv/bin/python bench/bench_load.py [--clients 20] [--requests 200] [--small-keys 5]
                                         [--slow-bodies 400]

Prints one table. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.images import photo, png_bytes  # noqa: E402
from helpers.model_factory import write_compact  # noqa: E402
from helpers.service import create_key, start_service, stop_service  # noqa: E402
from helpers.slow_bodies import SlowBodies  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def client_run(url: str, key: str, count: int, image: bytes, log: list[dict]) -> None:
    """One client: its ``count`` requests at once, then every accepted job to its end."""
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as http:

        async def post() -> dict:
            r = await http.post("/api/upscale/esrgan", data={"model": "tiny-compact",
                                                             "upscale_factor": "2"},
                                files={"file": ("p.png", image, "image/png")})
            entry = {"status": r.status_code, "retry_after": r.headers.get("retry-after"),
                     "code": r.json().get("error") if r.status_code >= 400 else None}
            if r.status_code in (200, 202):
                entry["job"] = r.json()["jobId"]
            log.append(entry)
            return entry

        entries = await asyncio.gather(*(post() for _ in range(count)))
        for entry in (e for e in entries if "job" in e):
            while True:
                r = await http.get(f"/api/status/{entry['job']}")
                if r.status_code == 429:  # this key's rate limit: wait as told
                    await asyncio.sleep(int(r.headers.get("retry-after", "1")))
                    continue
                if r.json()["status"] in ("completed", "failed", "cancelled"):
                    entry["final"] = r.json()["status"]
                    break
                await asyncio.sleep(0.3)


async def probe_health(url: str, key: str, stop: asyncio.Event, times: list[float],
                       failed: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                r = await http.get("/api/health")
            except httpx.HTTPError as exc:
                failed.append(type(exc).__name__)
                continue
            times.append(time.perf_counter() - start)
            if r.status_code != 200:
                failed.append(str(r.status_code))
            await asyncio.sleep(0.2)


async def run_load(url: str, keys: list[str], per_client: int, probe_key: str) -> dict:
    image = png_bytes(photo("coffee", (64, 48)))
    log: list[dict] = []
    health: list[float] = []
    health_failed: list[str] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_health(url, probe_key, stop, health, health_failed))
    start = time.perf_counter()
    await asyncio.gather(*(client_run(url, k, per_client, image, log) for k in keys))
    elapsed = time.perf_counter() - start
    stop.set()
    await prober
    return {"log": log, "health": health, "health_failed": health_failed, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--small-keys", type=int, default=5,
                        help="keys with a 3-job, 20-requests-per-minute quota")
    parser.add_argument("--slow-bodies", type=int, default=400,
                        help="keyless connections sending a body a byte every 3 s during the "
                        "load (0: none)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upscaler-load-"))
    models = work / "models" / "upscale_models"
    models.mkdir(parents=True)
    write_compact(models / "tiny-compact.pth")
    data = work / "data"
    keys = [create_key(data, f"client-{i}") for i in range(args.clients - args.small_keys)]
    keys += [create_key(data, f"small-{i}", "--max-open-jobs", "3", "--rate-limit", "20")
             for i in range(args.small_keys)]
    probe_key = create_key(data, "health-probe")
    env = {"UPSCALER_AUTH": "keys", "UPSCALER_MAX_OPEN_JOBS": "40",
           "UPSCALER_ESRGAN_MAX_REPLICAS": "2", "UPSCALER_SYNC_WAIT_S": "0"}
    service = start_service(data, work / "models", work / "service.log", env, timeout=300)
    flood = SlowBodies(service.url, args.slow_bodies, byte_every_s=3.0) \
        if args.slow_bodies else None
    try:
        with flood or nullcontext():
            result = asyncio.run(run_load(service.url, keys,
                                          args.requests // args.clients, probe_key))
    finally:
        stop_service(service)
    log, health = result["log"], result["health"]
    accepted = [e for e in log if "job" in e]
    refused = [e for e in log if "job" not in e]
    finals = Counter(e.get("final") for e in accepted)
    results_stored = len(list((data / "storage" / "results").glob("*.png")))
    codes = Counter(f"{e['status']} {e['code']}" for e in refused)
    without_retry = [e for e in refused if not e["retry_after"]]
    rows = [
        ("requests sent", len(log)), ("accepted", len(accepted)),
        ("accepted and completed", finals.get("completed", 0)),
        ("accepted and not completed", len(accepted) - finals.get("completed", 0)),
        ("refused", len(refused)), ("refused by code", dict(codes)),
        ("refused without Retry-After", len(without_retry)),
        ("lost (sent - accepted - refused)", len(log) - len(accepted) - len(refused)),
        ("results in storage", results_stored),
        ("wall time (s)", round(result["seconds"], 1)),
        ("slow keyless bodies: opened / answers", f"{flood.opened} / {dict(flood.answers)}"
         if flood else "none"),
        ("health probes while busy", len(health)),
        ("health probes not 200", dict(Counter(result["health_failed"]))),
        ("health p50 / p99 (ms)",
         f"{1000 * statistics.median(health):.0f} / {1000 * percentile(health, 99):.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = (len(log) == args.requests and not without_retry
          and finals.get("completed", 0) == len(accepted) == results_stored
          and all(e["status"] in (429, 503) for e in refused) and not result["health_failed"])
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
