"""ESRGAN benchmarks: tiled vs untiled engine time, and HTTP overhead over a bare engine call.

    .venv/bin/python bench/bench_esrgan.py [--size 256] [--repeat 3] [--model DAT_light_x4]

Prints one table. The HTTP figure is the full synchronous round trip (upload, validation, job
record, handle call, inference, encoding, storage write, answer) minus a bare engine call on the
same image in this process. It runs twice: with the real DAT-light model, and with a tiny random
RRDB whose inference is negligible, which isolates the fixed per-request cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from figures import report, timed  # noqa: E402
from helpers.images import photo, png_bytes  # noqa: E402
from helpers.model_factory import write_rrdb  # noqa: E402
from helpers.service import start_service, stop_service  # noqa: E402

from upscaler.commands.model_pull import pull  # noqa: E402
from upscaler.compute.dimensions import calculate_output_dimensions  # noqa: E402
from upscaler.compute.encode import encode_image  # noqa: E402
from upscaler.compute.engines.esrgan import EsrganEngine  # noqa: E402
from upscaler.compute.engines.models import ModelRegistry  # noqa: E402
from upscaler.compute.images import DecodedImage, decode_image  # noqa: E402
from upscaler.settings import Settings  # noqa: E402

OVERHEAD_GOAL_MS = 50



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input edge in pixels")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="DAT_light_x4")
    parser.add_argument("--tile", type=int, default=128, help="tile size for the tiled run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="upscaler-bench-"))
    settings = Settings(data_dir=work / "data", models_dir=work / "models")
    pull(["default"], settings, log=lambda *_: None)
    write_rrdb(settings.upscale_models_dir / "tiny-rrdb.pth")

    image_png = png_bytes(photo("astronaut", (args.size, args.size)))
    image: DecodedImage = decode_image(image_png, 10**8)
    plan = calculate_output_dimensions(args.size, args.size, 4)
    engine = EsrganEngine(ModelRegistry(settings.upscale_models_dir), device="auto")
    rows: list[tuple[str, str]] = [("device", str(engine.device)),
                                   ("image", f"{args.size}x{args.size} -> x4")]

    engine.upscale(image, args.model, plan, tile_size=args.size)  # warm-up (load, allocator)
    untiled = timed(lambda: engine.upscale(image, args.model, plan, tile_size=args.size),
                    args.repeat)
    tiles = engine.upscale(image, args.model, plan, tile_size=args.tile).stats["tiles"]
    tiled = timed(lambda: engine.upscale(image, args.model, plan, tile_size=args.tile),
                  args.repeat)
    rows += [(f"{args.model} untiled engine s", f"{untiled:.2f}"),
             (f"{args.model} tiled ({args.tile}px, {tiles} tiles) engine s", f"{tiled:.2f}"),
             ("tiled / untiled", f"{tiled / untiled:.2f}")]

    def bare(model: str) -> None:  # what one request does, minus HTTP/Ray: decode..encode
        result = engine.upscale(decode_image(image_png, 10**8), model, plan, tile_size=None)
        encode_image(result.image, "png", 150)

    models = (args.model, "tiny-rrdb")
    # Bare calls first, with the machine to themselves (a replica's idle threads would compete).
    bare_seconds = {}
    for model in models:
        bare(model)
        bare_seconds[model] = timed(lambda model=model: bare(model), args.repeat)
    engine.cache.clear()

    svc = start_service(settings.data_dir, settings.resolved_models_dir, work / "service.log",
                        {"UPSCALER_SYNC_WAIT_S": "600"})
    try:
        with svc.client(timeout=600) as client:
            for model in models:
                def request(model: str = model) -> None:
                    r = client.post("/api/upscale/esrgan",
                                    files={"file": ("p.png", image_png, "image/png")},
                                    data={"model": model, "tile_size": "0"})
                    assert r.status_code == 200 and r.json()["status"] == "completed", r.text

                request()  # warm the replica
                http = timed(request, args.repeat)
                rows += [(f"{model}: HTTP round trip s", f"{http:.3f}"),
                         (f"{model}: bare decode+engine+encode s", f"{bare_seconds[model]:.3f}"),
                         (f"{model}: HTTP overhead s", f"{http - bare_seconds[model]:.3f}")]
                report(f"request path: HTTP over the bare call, {args.size} px, {model}",
                       round((http - bare_seconds[model]) * 1000), OVERHEAD_GOAL_MS, "<=",
                       " ms", note=f"bare {bare_seconds[model]:.3f} s, HTTP {http:.3f} s, "
                       f"median of {args.repeat}")
    finally:
        stop_service(svc)

    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
