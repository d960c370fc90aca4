"""FLUX's files and the types its deployments share, without torch: a replica that finds the
files missing says so without importing torch or diffusers (quick start, small memory)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upscaler.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

# FLUX's transformer takes images whose sides are multiples of this: each crop is padded up.
FLUX_SIDE_MULTIPLE = 16


@dataclass(frozen=True)
class FluxFiles:
    root: Path

    @property
    def transformer(self) -> Path:
        return self.root / "unet" / "flux1-dev-Q8_0.gguf"

    @property
    def vae(self) -> Path:
        return self.root / "vae" / "ae.sft"

    @property
    def clip_l(self) -> Path:
        return self.root / "clip" / "clip_l.safetensors"

    @property
    def t5(self) -> Path:
        return self.root / "clip" / "t5xxl_fp8_e4m3fn.safetensors"

    @property
    def configs(self) -> Path:
        return self.root / "flux"

    def required(self) -> list[Path]:
        c = self.configs
        return [self.transformer, self.vae, self.clip_l, self.t5,
                c / "scheduler" / "scheduler_config.json", c / "transformer" / "config.json",
                c / "vae" / "config.json", c / "text_encoder" / "config.json",
                c / "text_encoder_2" / "config.json", c / "tokenizer", c / "tokenizer_2"]

    def missing(self) -> list[Path]:
        return [p for p in self.required() if not p.exists()]


class FluxNotInstalled(ServiceUnavailable):
    default_code = "flux_not_installed"


def flux_not_installed(missing: list[Path], root: Path) -> FluxNotInstalled:
    """The error names the missing files inside the models folder: it reaches clients (the
    status a replica reports); the folder itself goes to the log only."""
    names = [str(p.relative_to(root)) for p in missing]
    logger.warning("FLUX is not installed: %d file(s) missing under %s: %s", len(names), root,
                   ", ".join(names))
    listed = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    return FluxNotInstalled(f"FLUX model files are missing ({listed}); run "
                            "`upscaler models pull flux` (about 17 GB)")


@dataclass(frozen=True)
class PromptEmbeds:
    prompt_embeds: np.ndarray  # (1, seq, joint_dim)
    pooled: np.ndarray  # (1, pooled_dim)
