"""FLUX benchmark on CPU: one job on 1 vs 2 FLUX replicas (tiny models in the real formats).

    .venv/bin/python bench/bench_flux.py [--size 96x64] [--factor 2] [--tile 64] [--steps 2]

Each replica gets one torch thread (UPSCALER_CPU_THREADS=1), so the two runs use one and two
cores: the ratio shows how one image's tiles spread over replicas, the property that makes a
FLUX job use every GPU of a cluster. Prints job wall time (submit to completed), tiles and the
replicas that served them, and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import photo, png_bytes, start_service, stop_service, wait_for_job  # noqa: E402
from flux_factory import write_flux_models  # noqa: E402
from model_factory import write_rrdb  # noqa: E402


def run_job(models: Path, work: Path, replicas: int, args) -> dict:
    env = {"UPSCALER_FLUX_MIN_REPLICAS": str(replicas),
           "UPSCALER_FLUX_MAX_REPLICAS": str(replicas), "UPSCALER_CPU_THREADS": "1",
           "UPSCALER_FLUX_MIN_TILE_SIZE": "32", "HF_HUB_OFFLINE": "1"}
    svc = start_service(work / f"data{replicas}", models, work / f"service{replicas}.log", env,
                        timeout=300)
    w, h = (int(v) for v in args.size.split("x"))
    try:
        with svc.client() as client:
            data = png_bytes(photo("coffee", (w, h)))
            fields = {"upscale_factor": str(args.factor), "tile_size": str(args.tile),
                      "tile_padding": "16", "mask_blur": "4", "steps": str(args.steps),
                      "denoise": "0.5", "upscale_model": "tiny-rrdb", "tile_order": "parallel"}
            # Warm-up job: first calls pay for lazy initialisation in each replica.
            r = client.post("/api/upscale/flux", files={"file": ("p.png", data)}, data=fields)
            wait_for_job(client, r.json()["jobId"], timeout=1800)
            start = time.perf_counter()
            r = client.post("/api/upscale/flux", files={"file": ("p.png", data)}, data=fields)
            status = wait_for_job(client, r.json()["jobId"], timeout=1800)
            wall = time.perf_counter() - start
            assert status["status"] == "completed", status
            return {"wall": wall, "tiles": status["stats"]["tiles"],
                    "replicas": len(status["stats"]["replicas"])}
    finally:
        stop_service(svc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="96x64")
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upscaler-flux-bench-"))
    models = write_flux_models(work / "models")
    (models / "upscale_models").mkdir(parents=True, exist_ok=True)
    write_rrdb(models / "upscale_models" / "tiny-rrdb.pth")
    one = run_job(models, work, 1, args)
    two = run_job(models, work, 2, args)
    print(f"job: {args.size} x{args.factor}, tile {args.tile}, {one['tiles']} tiles, "
          f"{args.steps} steps at denoise 0.5, one torch thread per replica")
    print(f"1 replica : {one['wall']:.1f} s (tiles served by {one['replicas']} replica)")
    print(f"2 replicas: {two['wall']:.1f} s (tiles served by {two['replicas']} replicas)")
    print(f"speed-up  : {one['wall'] / two['wall']:.2f}x")


if __name__ == "__main__":
    main()
