"""Memory of a 4x ESRGAN job: peak RSS over the output's bytes, measured in a separate process.

    .venv/bin/python bench/bench_memory.py [--width 2048] [--feat 64] [--convs 16]

The job is what an ESRGAN replica does with an upload: decode the PNG, run the model (the
production engine and loader, the CPU tile size of the default settings), write the PNG with
DPI. The model is an SRVGG compact x4 (realesr-general-x4v3's architecture and file layout:
64 features, 16 convolutions; random weights) on scikit-image's astronaut at 2048x1536, so the
output is 8192x6144 (151 MB of 8-bit RGB). The figure is how far the process's peak RSS rose
from just before the decode (imports and the loaded model excluded) to after the encode, over
the output's bytes; the goal is 2.5x.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from figures import report  # noqa: E402

GOAL = 2.5


def job(folder: Path, width: int, feat: int, convs: int) -> dict:
    """Runs in the child process: one job, and its peak RSS growth."""
    from helpers.images import photo
    from helpers.model_factory import write_compact

    from deployments.esrgan import esrgan_engine
    from upscaler.compute.dimensions import calculate_output_dimensions
    from upscaler.compute.encode import encode_image
    from upscaler.compute.engines.models import ModelRegistry
    from upscaler.compute.images import decode_image
    from upscaler.settings import Settings

    write_compact(folder / "compact.pth", num_feat=feat, num_conv=convs)
    settings = Settings(device="cpu", data_dir=folder)
    engine = esrgan_engine(settings, ModelRegistry(folder))
    engine.load("compact", True)
    height = width * 3 // 4
    buf = io.BytesIO()
    photo("astronaut", (width, height)).save(buf, "PNG")
    upload = buf.getvalue()
    del buf
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = decode_image(upload, settings.max_input_pixels)
    plan = calculate_output_dimensions(width, height, 4)
    result = engine.upscale(image, "compact", plan)
    encoded = encode_image(result.image, "png", plan.dpi, settings.png_compress_level,
                           png_encoder=settings.png_encoder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"growth_bytes": (peak - base) * 1024, "tile": result.stats["tile_size"],
            "output": [plan.output_width, plan.output_height], "png_bytes": len(encoded),
            "upload_bytes": len(upload)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=2048, help="input width (4:3)")
    parser.add_argument("--feat", type=int, default=64)
    parser.add_argument("--convs", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(job(Path(args.child), args.width, args.feat, args.convs)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, __file__, "--child", folder, "--width",
                              str(args.width), "--feat", str(args.feat), "--convs",
                              str(args.convs)], cwd=ROOT, capture_output=True, text=True,
                             check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    w, h = m["output"]
    output_bytes = w * h * 3
    print(f"SRVGG compact x4 ({args.feat} features, {args.convs} convs), "
          f"{args.width}x{args.width * 3 // 4} -> {w}x{h}, CPU tile {m['tile']}: output "
          f"{output_bytes / 1e6:.0f} MB, PNG {m['png_bytes'] / 1e6:.0f} MB, peak RSS rose "
          f"{m['growth_bytes'] / 1e6:.0f} MB")
    met = report("memory: peak RSS of a 4x job / output bytes",
                 round(m["growth_bytes"] / output_bytes, 2), GOAL, unit="x",
                 note=f"compact x4 {args.feat}f/{args.convs}c, {w}x{h} output, CPU")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
