"""FLUX on a GPU: full-size FLUX.1-dev architecture with random weights (timing does not depend
on the weights), bf16 and GGUF Q8_0 (written at run time in the community layout and loaded by
diffusers' GGUF path, as production loads the real file).

    .venv/bin/python bench/bench_flux_gpu.py [--precision both|bf16|q8] [--skip-job]

Prints seconds per diffusion step for one 512 tile (576x576 with its 32 px padding), and the
whole USDU job 1024x768 -> 4096x3072, tile 512, 20 steps at denoise 0.2 (48 tiles, 4 steps each)
on this one GPU, with peak GPU memory. The ESRGAN pre-pass is timed by bench_gpu_rrdb.py; here
the job starts from a bicubic enlargement. Text embeddings are random tensors of the real shape
(T5 runs once per job). Needs CUDA; about 13 GB of disk for the Q8_0 file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from figures import report  # noqa: E402
from helpers.flux_factory import write_transformer_gguf  # noqa: E402

from upscaler.compute.engines.flux import FLUX_DEV_CONFIGS, FluxTileEngine, PromptEmbeds, write_json  # noqa: E402
from upscaler.compute.engines.usdu import plan_tiles, redraw_tiles  # noqa: E402


def build(precision: str, work: Path):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxImg2ImgPipeline,
        FluxTransformer2DModel,
        GGUFQuantizationConfig,
    )

    for rel, data in FLUX_DEV_CONFIGS.items():
        write_json(work / rel, data)
    dtype, device = torch.bfloat16, torch.device("cuda")
    if precision == "q8":
        gguf = work / "flux1-dev-random-Q8_0.gguf"
        if not gguf.exists():
            t0 = time.perf_counter()
            write_transformer_gguf(gguf, text_dim=4096, pooled_dim=768, double=19, single=38)
            print(f"wrote random Q8_0 GGUF ({gguf.stat().st_size / 1e9:.1f} GB) in "
                  f"{time.perf_counter() - t0:.0f} s")
        transformer = FluxTransformer2DModel.from_single_file(
            str(gguf), config=str(work / "transformer"), local_files_only=True,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)
    else:
        config = FluxTransformer2DModel.load_config(work / "transformer")
        with torch.device("cuda"):
            transformer = FluxTransformer2DModel.from_config(config).to(dtype)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(work / "vae")).to(dtype)
    pipe = FluxImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(work / "scheduler")),
        vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=transformer).to(device)
    pipe.set_progress_bar_config(disable=True)
    return FluxTileEngine.from_pipeline(pipe, device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["both", "bf16", "q8"], default="both")
    parser.add_argument("--skip-job", action="store_true", help="only the per-step timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (see bench_flux.py for CPU)")
        report("GPU: FLUX 1024x768 -> 4096x3072, 20 steps, denoise 0.2", None, 15, "<=", " s",
               note="no GPU here")
        return
    work = Path(tempfile.mkdtemp(prefix="upscaler-flux-gpu-"))
    embeds = PromptEmbeds(np.random.default_rng(0).standard_normal((1, 512, 4096), np.float32),
                          np.random.default_rng(1).standard_normal((1, 768), np.float32))
    print(f"GPU: {torch.cuda.get_device_name()}")
    for precision in (["bf16", "q8"] if args.precision == "both" else [args.precision]):
        engine = build(precision, work)
        torch.cuda.reset_peak_memory_stats()
        crop = np.random.default_rng(2).random((576, 576, 3), np.float32)
        engine.redraw(crop, embeds, 1.0, 2, 3.5, 0)  # warm-up
        torch.cuda.synchronize()
        steps = 8
        t0 = time.perf_counter()
        engine.redraw(crop, embeds, 1.0, steps, 3.5, 0)
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / steps
        print(f"[{precision}] 512 tile (576 px with padding): {per_step:.3f} s/step")
        if not args.skip_job:
            small = torch.rand(1, 3, 768, 1024)
            big = torch.nn.functional.interpolate(small, size=(3072, 4096), mode="bicubic",
                                                  align_corners=False).clamp(0, 1)
            source = big[0].permute(1, 2, 0).numpy()
            tiles = plan_tiles(3072, 4096, 512, 32, "chess")
            t0 = time.perf_counter()
            def redraw(crop, tile, engine=engine):
                return engine.redraw(crop, embeds, 0.2, 20, 3.5, tile.index)

            redraw_tiles(source, tiles, redraw, 8)
            torch.cuda.synchronize()
            job_s = time.perf_counter() - t0
            print(f"[{precision}] job 1024x768 -> 4096x3072, {len(tiles)} tiles, 20 steps at "
                  f"denoise 0.2: {job_s:.1f} s on one GPU (goal <= 15 s)")
            report(f"GPU: FLUX 1024x768 -> 4096x3072, 20 steps, denoise 0.2 [{precision}]",
                   round(job_s, 1), 15, "<=", " s", note=torch.cuda.get_device_name())
        print(f"[{precision}] peak GPU memory: {torch.cuda.max_memory_allocated() / 1024**3:.1f}"
              " GiB")
        engine = None  # free this precision's weights before the next
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
