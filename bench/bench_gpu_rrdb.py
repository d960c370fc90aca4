"""GPU check: a production-size RRDB (23 blocks, 64 features, like 4x-UltraSharp) with random
weights, fp16, 4x of a 1024x768 image through the production loader and engine.

    .venv/bin/python bench/bench_gpu_rrdb.py [--tile 0] [--repeat 3] [--compile]

Timing does not depend on the weights. Goals on an H100-class card: the model's 4x <= 0.3 s;
the request's work (PNG decode, 4x, PNG encode with DPI) <= 0.6 s. Prints both beside their
goals, tiles, batch, peak GPU memory. On a machine without CUDA it says so and runs a small CPU
version so the script itself stays tested.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from figures import report  # noqa: E402
from helpers.images import photo, png_bytes  # noqa: E402
from helpers.model_factory import write_rrdb  # noqa: E402

from upscaler.compute.dimensions import calculate_output_dimensions  # noqa: E402
from upscaler.compute.encode import encode_image  # noqa: E402
from upscaler.compute.engines.esrgan import EsrganEngine  # noqa: E402
from upscaler.compute.engines.models import ModelRegistry  # noqa: E402
from upscaler.compute.images import decode_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=0, help="0 = automatic")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device: running a 64x48 CPU smoke version of the same path")
        args.width, args.height, args.repeat = 64, 48, 1

    folder = Path(tempfile.mkdtemp(prefix="upscaler-gpu-"))
    write_rrdb(folder / "rrdb-23x64.pth", num_filters=64, num_blocks=23, scale=4)
    engine = EsrganEngine(ModelRegistry(folder), device="auto", compile_models=args.compile)
    png = png_bytes(photo("astronaut", (args.width, args.height)))
    image = decode_image(png, 10**9)
    plan = calculate_output_dimensions(args.width, args.height, 4)
    tile = args.tile or None

    result = engine.upscale(image, "rrdb-23x64", plan, tile_size=tile)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = engine.upscale(image, "rrdb-23x64", plan, tile_size=tile)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    stats = result.stats

    def request_work() -> None:  # what a replica does for one request, storage aside
        out = engine.upscale(decode_image(png, 10**9), "rrdb-23x64", plan, tile_size=tile)
        encode_image(out.image, "png", plan.dpi)

    request_work()
    request_times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        request_work()
        request_times.append(time.perf_counter() - start)
    request_s = statistics.median(request_times)
    print(f"device            {stats['device']} "
          f"({torch.cuda.get_device_name() if cuda else 'cpu'})")
    print(f"dtype             {stats['dtype']}")
    print(f"image             {args.width}x{args.height} -> {plan.output_width}x"
          f"{plan.output_height}")
    print(f"tile size         {stats['tile_size']} ({stats['tiles']} tiles)")
    print(f"4x of the model   {seconds:.3f} s (median of {args.repeat}; goal <= 0.3 s on an "
          f"H100-class card{'' if cuda else '; CPU smoke run, not comparable'})")
    print(f"request's work    {request_s:.3f} s (decode, 4x, PNG with DPI; goal <= 0.6 s)")
    print(f"tiles / s         {stats['tiles'] / seconds:.2f} (context {stats['context']} px)")
    if cuda:
        print(f"peak GPU memory   {torch.cuda.max_memory_allocated() / 1024**3:.2f} GiB")
    where = torch.cuda.get_device_name() if cuda else "no GPU here: CPU smoke run, not the goal"
    report("GPU: RRDB 23x64 x4 of 1024x768, fp16", round(seconds, 3) if cuda else None, 0.3,
           "<=", " s", note=where)
    report("GPU: request's work (decode, x4, PNG)", round(request_s, 3) if cuda else None,
           0.6, "<=", " s", note=where)


if __name__ == "__main__":
    main()
