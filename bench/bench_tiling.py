"""Tiling: how close tiles of 64 px come to one untiled pass, and what tiling costs.

    .venv/bin/python bench/bench_tiling.py [--size 256x192] [--repeat 2]

Models through the production loader and engine, on a real photo: an RRDB and an SRVGG compact
model in the real on-disk formats (random weights; the contexts are `tiling.CONTEXT_PX`'s), and
the real DAT-light x4 (channel attention over the whole input: no tiling is exact). Prints a
table: PSNR of 64 px tiles against the untiled output, and the time of the default (automatic)
tile size and of 64 px tiles over the untiled pass, beside the goals.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from figures import report, timed  # noqa: E402
from helpers.images import photo, psnr  # noqa: E402
from helpers.model_factory import REAL_DAT, write_compact, write_rrdb  # noqa: E402

from upscaler.commands.model_pull import pull  # noqa: E402
from upscaler.compute.dimensions import calculate_output_dimensions  # noqa: E402
from upscaler.compute.engines.esrgan import EsrganEngine  # noqa: E402
from upscaler.compute.engines.models import ModelRegistry  # noqa: E402
from upscaler.compute.engines.tiling import context_for, tiling_cost  # noqa: E402
from upscaler.compute.images import DecodedImage  # noqa: E402
from upscaler.settings import Settings  # noqa: E402

EXACT_GOAL_DB = 60.0
COST_GOAL = 1.15



def measure(repeat: int, size: tuple[int, int]) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="upscaler-tiling-"))
    settings = Settings(data_dir=work / "data", models_dir=work / "models")
    pull([REAL_DAT], settings, log=lambda *_: None)
    folder = settings.upscale_models_dir
    write_rrdb(folder / "rrdb-6x32.pth", num_filters=32, num_blocks=6)
    write_compact(folder / "compact-32x16.pth", num_feat=32, num_conv=16)
    engine = EsrganEngine(ModelRegistry(folder), device="auto")
    w, h = size
    rgb = np.asarray(photo("astronaut", (w, h)), dtype=np.float32) / 255
    image = DecodedImage(rgb, None, "rgb", 8, None, "PNG")
    plan = calculate_output_dimensions(w, h, 4)
    rows = []
    for name, convolutional in (("rrdb-6x32", True), ("compact-32x16", True), (REAL_DAT, False)):
        def run(tile: int | None, name: str = name):
            return engine.upscale(image, name, plan, tile_size=tile, quantize=False)

        whole, tiled = run(max(w, h)), run(64)
        auto = run(None)
        untiled_s = timed(lambda: run(max(w, h)), repeat, warm=True)
        rows.append({
            "model": name, "architecture": whole.stats["architecture"],
            "context": tiled.stats["context"], "convolutional": convolutional,
            "tiles_64": tiled.stats["tiles"], "psnr_64": psnr(tiled.image.rgb, whole.image.rgb),
            "auto_tile": auto.stats["tile_size"], "auto_tiles": auto.stats["tiles"],
            "cost_auto": timed(lambda: run(None), repeat, warm=True) / untiled_s,
            "cost_64": timed(lambda: run(64), repeat, warm=True) / untiled_s,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256x192", help="input WxH (x4 output)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    rows = measure(args.repeat, size)
    print(f"tiled vs untiled, {args.size} photo x4 (CPU unless a GPU is seen)")
    print(f"{'model':15s} {'context':>7s} {'64px tiles':>10s} {'PSNR dB':>8s} {'goal':>6s} "
          f"{'auto tile':>10s} {'cost auto':>9s} {'goal':>5s} {'cost 64px':>9s}")
    for r in rows:
        goal = f">={EXACT_GOAL_DB:.0f}" if r["convolutional"] else "n/a"
        print(f"{r['model']:15s} {r['context']:>7d} {r['tiles_64']:>10d} {r['psnr_64']:>8.1f} "
              f"{goal:>6s} {r['auto_tile']:>5d} ({r['auto_tiles']}) {r['cost_auto']:>8.2f}x "
              f"{'<=' + str(COST_GOAL):>5s} {r['cost_64']:>8.2f}x")
    for r in rows:
        if r["convolutional"]:
            report(f"tiling: {r['model']} 64 px tiles vs untiled", round(r["psnr_64"], 1),
                   EXACT_GOAL_DB, ">=", " dB", note=f"context {r['context']} px")
        report(f"tiling: {r['model']} cost at the default tile", round(r["cost_auto"], 2),
               COST_GOAL, "<=", "x", note=f"tile {r['auto_tile']} ({r['auto_tiles']} tiles)")
    print("compute over one untiled pass for a 1024x768 input (pixels run through the model):")
    for arch in ("ESRGAN", "Compact"):
        for tile in (512, 1024):
            print(f"  {arch:8s} context {context_for(arch)} px, tile {tile}: "
                  f"{tiling_cost(768, 1024, tile, context_for(arch)):.2f}x")


if __name__ == "__main__":
    main()
