"""Memory of the largest ESRGAN job the limits allow, measured as the peak RSS of a separate
process: the engine's passes (each bounded by the output cap), the resample and the PNG
encoding, as a multiple of the output's bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.processes import REPO

# Peak RSS growth over the output's 8-bit RGB bytes at this small size (4.2 MP, where the
# model's tile buffers weigh most): measured 5.1x (x4, quantized straight into the output) and
# 10.3x (x8: the 4x model's float output, then the resample) on 2 cores; 12.9-15.5x before
# big buffers went back to the system at once (upscaler/compute/memory.py). A large 4x job is 1.9x:
# bench/bench_memory.py. The old intermediate cap (4x the output cap) took two passes: 47.7x.
WORST_MULTIPLE = 14

SCRIPT = """
import json, resource, sys
sys.path.insert(0, "tests")
from pathlib import Path
import numpy as np
from deployments.esrgan import esrgan_engine
from helpers.model_factory import write_compact
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.compute.engines.models import ModelRegistry
from upscaler.compute.encode import encode_image
from upscaler.compute.images import DecodedImage
from upscaler.settings import Settings

folder, side = Path(sys.argv[1]), int(sys.argv[2])
factor, cap = float(sys.argv[3]), int(sys.argv[4])
write_compact(folder / "compact.pth")
settings = Settings(device="cpu", max_output_pixels=cap, data_dir=folder)
engine = esrgan_engine(settings, ModelRegistry(folder))
engine.load("compact", True)
# Made in float32 at once: a float64 draw would set a peak the job then stays under.
pixels = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
image = DecodedImage(pixels, None, "rgb", 8, None, "PNG")
plan = calculate_output_dimensions(side, side, factor)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = engine.upscale(image, "compact", plan)
encoded = encode_image(result.image, "png", plan.dpi, settings.png_compress_level,
                       png_encoder=settings.png_encoder)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kb": peak - base, "passes": result.stats["passes"],
                  "pixels": plan.output_width * plan.output_height}))
"""


@pytest.mark.slow  # a separate process, to measure its peak
@pytest.mark.parametrize("side,factor", [(512, 4), (256, 8), (2028, 1.01)])
def test_the_largest_esrgan_job_is_a_bounded_multiple_of_its_output(tmp_path, side, factor):
    """At the output cap (scaled down to 4.2 MP here): x4 of 512 px, and x8 of 256 px with a
    4x model, where a second pass would make a 16.8 MP intermediate and is not run; x1.01 of
    2028 px, whose one x4 pass would make 66 MP (63x): its input is shrunk to fit the cap."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(side), str(factor),
                          "4200000"], cwd=REPO, capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    output_bytes = measured["pixels"] * 3
    multiple = measured["growth_kb"] * 1024 / output_bytes
    print(f"x{factor:g} of {side} px: peak RSS grew {multiple:.1f}x the output's bytes")
    assert measured["passes"] == 1
    assert multiple <= WORST_MULTIPLE
