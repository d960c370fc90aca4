"""The fidelity report's figures: ESRGAN's colour drift and seams on real photos with the real
DAT-light x4, and what the report costs on a 4x job of a 1024x768 input.

    .venv/bin/python bench/bench_fidelity.py [--model DAT_light_x4] [--scale 0.5] [--tile 0]

Photos: scikit-image's astronaut, coffee and chelsea, shrunk by ``--scale`` (Lanczos) so a CPU
runs DAT-light on them in minutes; each is upscaled x4 (``--tile`` input px; 0: one tile, as
DAT's 64 px of context make tiles of photos this small cost several times more), and the
report compares the output, area-averaged back, with the photo (goal: mean ΔE2000 <= 1.0). The
cost: the report of a 4096x3072 output, a tiled 4x job of a 1024x768 photo (tiny random
Compact model, exact tiles: its seam score is the metric's on a seamless tiled output; the
model does not change the report's work), against the job's engine time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from figures import report  # noqa: E402
from helpers.images import photo, png_bytes  # noqa: E402
from helpers.model_factory import write_compact  # noqa: E402
from PIL import Image  # noqa: E402

from deployments.quality import esrgan_fidelity, measure_quality  # noqa: E402
from upscaler.commands.model_pull import pull  # noqa: E402
from upscaler.compute.dimensions import calculate_output_dimensions  # noqa: E402
from upscaler.compute.engines.esrgan import EsrganEngine  # noqa: E402
from upscaler.compute.engines.models import ModelRegistry  # noqa: E402
from upscaler.compute.images import decode_image  # noqa: E402
from upscaler.settings import Settings  # noqa: E402

DELTA_E_GOAL = 1.0


def fidelity(engine: EsrganEngine, png: bytes, model: str, tile: int):
    image = decode_image(png, 10**9)
    plan = calculate_output_dimensions(image.width, image.height, 4)
    t0 = time.perf_counter()
    result = engine.upscale(image, model, plan, tile_size=tile)
    engine_s = time.perf_counter() - t0
    fid = esrgan_fidelity(image, result.stats, plan.output_height, plan.output_width)
    quality, seconds = measure_quality("esrgan", fid, result.image)
    assert quality is not None
    return quality, seconds, engine_s, result.stats["tiles"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DAT_light_x4")
    parser.add_argument("--scale", type=float, default=0.5, help="photo size factor")
    parser.add_argument("--tile", type=int, default=0, help="tile (input px); 0: one tile")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="upscaler-bench-"))
    settings = Settings(data_dir=work / "data", models_dir=work / "models")
    pull([args.model], settings, log=lambda *_: None)
    write_compact(settings.upscale_models_dir / "tiny-compact.pth")
    engine = EsrganEngine(ModelRegistry(settings.upscale_models_dir), device="auto")

    worst = 0.0
    for name in ("astronaut", "coffee", "chelsea"):
        im = photo(name)
        im = im.resize((round(im.width * args.scale), round(im.height * args.scale)),
                       Image.LANCZOS)
        q, seconds, engine_s, tiles = fidelity(engine, png_bytes(im), args.model,
                                               args.tile or max(im.size))
        worst = max(worst, q.delta_e_mean)
        print(f"{name} {im.width}x{im.height} x4, {tiles} tiles: ΔE2000 mean "
              f"{q.delta_e_mean:.3f} p95 {q.delta_e_p95:.3f}, seam score {q.seam_score}, "
              f"report {seconds:.2f} s, engine {engine_s:.1f} s", flush=True)
    report(f"ESRGAN ({args.model}) colour drift, worst photo", worst, DELTA_E_GOAL, "<=",
           " ΔE2000", note="astronaut, coffee, chelsea; mean over pixels")

    png = png_bytes(photo("astronaut", (1024, 768)))
    q, seconds, engine_s, tiles = fidelity(engine, png, "tiny-compact", 256)
    report("fidelity report of a 4x job of 1024x768 (4096x3072 out)", seconds, None,
           unit=" s", note=f"the job's tiny-model engine time {engine_s:.1f} s, "
           f"{tiles} tiles, seam score {q.seam_score}")


if __name__ == "__main__":
    main()
