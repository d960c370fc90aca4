"""Durable load: 200 ESRGAN jobs from 20 clients against 2 Ingress replicas on an S3 bucket
(moto's server on 127.0.0.1), through a real `upscaler serve`.

    .venv/bin/python bench/bench_durable_load.py [--clients 20] [--requests 200]

Each client sends its jobs at once with an Idempotency-Key each, retries what is refused (429
or 503, after its Retry-After, with the same key) and follows every job to its end. Checks that
all complete, that no job was lost or made twice (one job id per logical request, one result
object per job in the bucket), and prints status p50/p99 while the service is busy.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from figures import report  # noqa: E402
from helpers.images import photo, png_bytes  # noqa: E402
from helpers.model_factory import write_compact  # noqa: E402
from helpers.processes import free_port  # noqa: E402
from helpers.service import start_service, stop_service  # noqa: E402

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
          "AWS_CONFIG_FILE": "/nonexistent"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def client_run(url: str, count: int, image: bytes, jobs: list[str],
                     status_s: list[float], finals: Counter) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 headers={"Prefer": "respond-async"}) as http:
        async def one() -> None:
            key = uuid.uuid4().hex
            while True:
                r = await http.post("/api/upscale/esrgan",
                                    data={"model": "tiny-compact", "upscale_factor": "2"},
                                    files={"file": ("p.png", image, "image/png")},
                                    headers={"Idempotency-Key": key})
                if r.status_code in (409, 429, 503):
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                r.raise_for_status()
                job = r.json()["jobId"]
                break
            jobs.append(job)
            while True:
                start = time.perf_counter()
                r = await http.get(f"/api/status/{job}")
                if r.status_code in (429, 503):
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                status_s.append(time.perf_counter() - start)
                if r.json()["status"] in ("completed", "failed", "cancelled"):
                    finals[r.json()["status"]] += 1
                    return
                await asyncio.sleep(0.5)

        await asyncio.gather(*(one() for _ in range(count)))


def main() -> int:
    import argparse

    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    work = Path(tempfile.mkdtemp(prefix="upscaler-durable-load-"))
    models = work / "models" / "upscale_models"
    models.mkdir(parents=True)
    write_compact(models / "tiny-compact.pth")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("load-bucket")
    env = {**S3_ENV, "UPSCALER_STORAGE_URL": "s3://load-bucket/upscaler",
           "UPSCALER_STORAGE_OPTIONS": f'{{"client_kwargs": {{"endpoint_url": "{endpoint}"}}}}',
           "UPSCALER_INGRESS_REPLICAS": "2", "UPSCALER_MAX_OPEN_JOBS": "60",
           "UPSCALER_ESRGAN_MAX_REPLICAS": "2", "UPSCALER_SYNC_WAIT_S": "0"}
    service = start_service(work / "data", work / "models", work / "service.log", env,
                            timeout=300)
    jobs: list[str] = []
    status_s: list[float] = []
    finals: Counter = Counter()
    image = png_bytes(photo("coffee", (64, 48)))
    try:
        start = time.perf_counter()

        async def run() -> None:
            await asyncio.gather(*(client_run(service.url, args.requests // args.clients,
                                              image, jobs, status_s, finals)
                                   for _ in range(args.clients)))

        asyncio.run(run())
        elapsed = time.perf_counter() - start
    finally:
        stop_service(service)
    fs.invalidate_cache()
    results = [p for p in fs.ls("load-bucket/upscaler/results") if p.endswith(".png")]
    moto.stop()
    names = Counter(Path(p).stem for p in results)
    rows = [("requests", args.requests), ("distinct jobs", len(set(jobs))),
            ("completed", finals.get("completed", 0)), ("not completed", sum(finals.values())
                                                        - finals.get("completed", 0)),
            ("result objects in the bucket", len(results)),
            ("results of jobs not sent / twice",
             f"{len(set(names) - set(jobs))} / {sum(1 for n in names.values() if n > 1)}"),
            ("wall time (s)", round(elapsed, 1)),
            ("status p50 / p99 (ms)", f"{1000 * statistics.median(status_s):.0f} / "
                                      f"{1000 * percentile(status_s, 99):.0f}")]
    width = max(len(n) for n, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = (len(set(jobs)) == len(jobs) == args.requests == finals.get("completed", 0)
          == len(results) and set(names) == set(jobs))
    report("durable load: jobs completed of those sent (2 Ingress, S3)",
           finals.get("completed", 0) / args.requests, 1.0, ">=", "",
           note=f"{len(results)} results in the bucket, {len(set(jobs))} distinct jobs")
    report("durable load: status p99", round(1000 * percentile(status_s, 99)), None,
           unit=" ms")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
