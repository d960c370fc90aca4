"""Peak RSS of the FLUX coordinator's own work on one job, per output pixel: what
upscaler/compute/memory.py COORDINATOR_BYTES_PER_PIXEL sizes. Each size runs in a fresh
subprocess doing the coordinator's steps (deployments/flux.py FluxCoordinator._run): the pre-pass
read by bands from the npz the ESRGAN replica stored (written here by another process); every
ready tile's crop cut at once (they wait in the handle's queue), each "redrawn" (noise: the
replicas' work is not the coordinator's memory), colour-fixed and kept in files; the blend by
bands; the result read by strips as the encoders do.

    python bench/bench_flux_coordinator.py 4096 8192 [--order parallel]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(side: int, order: str) -> dict:
    import numpy as np
    import torch  # noqa: F401  (the coordinator has it once a tile is made: the baseline)

    from upscaler.compute.canvas_file import scratch_folder
    from upscaler.compute.engines.usdu import (
        TileSchedule,
        blend_to_canvas,
        color_fix,
        plan_tiles,
        render_crop,
    )
    from upscaler.compute.engines.usdu_disk import TileFiles, read_npz
    from upscaler.compute.memory import return_big_buffers

    return_big_buffers()  # as every replica does at start (deployments/common.py)
    marks = {"imports": _peak()}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root, scratch_folder(Path(root)) as folder:
        stored = Path(root) / "prepass.npz"
        # The npz the ESRGAN replica stored (deployments/esrgan.py prepass), made elsewhere.
        subprocess.run([sys.executable, __file__, "--write-npz", str(side), str(stored)],
                       check=True)
        with open(stored, "rb") as f:
            prepass = read_npz(f, folder)
        marks["prepass"] = _peak()
        tiles = plan_tiles(side, side, 512, 32, order)  # FluxParams' defaults
        schedule, outputs = TileSchedule(tiles), TileFiles(folder / "tiles")
        while not schedule.finished:
            ready = schedule.take_ready()
            crops = [render_crop(prepass.rgb, tiles, outputs, t, 8) for t in ready]
            for tile, crop in zip(ready, crops, strict=True):
                drawn = np.clip(crop + rng.normal(0, 0.02, crop.shape), 0, 1).astype(np.float16)
                out = color_fix(drawn.astype(np.float32), crop, "wavelet").astype(np.float16)
                buf = io.BytesIO()
                np.save(buf, out, allow_pickle=False)
                outputs.put_npy(tile.index, buf.getvalue())
                schedule.finish(tile.index)
            del crops
        marks["tiles"] = _peak()
        result = blend_to_canvas(prepass, tiles, outputs, 8, folder)
        for _ in result.strips(with_alpha=True):
            pass
        marks["blend"] = _peak()
    return marks


def _write_npz(side: int, path: str) -> None:
    import numpy as np

    from upscaler.compute.engines.usdu_disk import image_to_disk, write_npz
    from upscaler.compute.images import DecodedImage

    rng = np.random.default_rng(0)
    image = DecodedImage(rng.random((side, side, 3), np.float32),
                         rng.random((side, side), np.float32), "rgb", 8, None, "PNG")
    with tempfile.TemporaryDirectory() as folder:
        write_npz(image_to_disk(image, Path(folder)), Path(path))


def main() -> None:
    if sys.argv[1:2] == ["--write-npz"]:
        return _write_npz(int(sys.argv[2]), sys.argv[3])
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(int(sys.argv[2]), sys.argv[3])))
        return None
    parser = argparse.ArgumentParser()
    parser.add_argument("sides", type=int, nargs="+")
    parser.add_argument("--order", default="chess")
    args = parser.parse_args()
    for side in args.sides:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--one", str(side), args.order],
                             check=True, capture_output=True, text=True).stdout
        marks = json.loads(out.strip().splitlines()[-1])
        base = marks["imports"]
        px = side * side
        print(f"{side}x{side} {args.order}: "
              + ", ".join(f"{k} {(v - base) / px:.1f} B/px" for k, v in marks.items()
                          if k != "imports")
              + f" (peak {marks['blend'] / 2**20:.0f} MiB, imports {base / 2**20:.0f} MiB,"
              f" {time.perf_counter() - t0:.0f} s)")
    return None


if __name__ == "__main__":
    main()
