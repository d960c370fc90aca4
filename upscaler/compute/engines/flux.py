"""FLUX.1-dev img2img from single files under the models folder, fully offline (every config
from ``flux/``), for Ultimate SD Upscale tiles. Files: docs/design/engines.md
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from upscaler.compute.device import resolve_device
from upscaler.compute.engines import MODEL_BUILD_LOCK
from upscaler.compute.engines.flux_files import (  # noqa: F401  (this module's public names too)
    FLUX_SIDE_MULTIPLE,
    FluxFiles,
    FluxNotInstalled,
    PromptEmbeds,
    flux_not_installed,
)

MemoryMode = Literal["resident", "offload"]


def _load_transformers_encoder(cls, config_dir: Path, weights: Path, dtype: torch.dtype):
    """A transformers encoder built from its config, weights from a single safetensors file
    (upcast to ``dtype`` at load: fp8 e4m3 files become bf16/fp32 here, once)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    config = cls.config_class.from_pretrained(str(config_dir), local_files_only=True)
    with init_empty_weights(include_buffers=False):  # no 19 GB fp32 T5 before the real weights
        model = cls(config)
    state = {k: v.to(dtype) for k, v in load_file(str(weights)).items()
             if v.dtype.is_floating_point}
    missing, _ = model.load_state_dict(state, strict=False, assign=True)
    # Tied embeddings (T5's encoder.embed_tokens = shared) are not stored twice.
    missing = [k for k in missing if not k.endswith("embed_tokens.weight")]
    if missing:
        raise ValueError(f"{weights.name}: missing weights {missing[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.to(dtype).eval()


def load_flux_pipeline(models_dir: Path, device: torch.device, dtype: torch.dtype,
                       memory_mode: MemoryMode = "resident"):
    """Build FluxImg2ImgPipeline from the models folder's single files. Raises
    FluxNotInstalled before diffusers and transformers are even imported (seconds of a
    replica's start)."""
    files = FluxFiles(Path(models_dir))
    if missing := files.missing():
        raise flux_not_installed(missing, files.root)
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxImg2ImgPipeline,
        FluxTransformer2DModel,
        GGUFQuantizationConfig,
    )
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    cfg = files.configs
    transformer = FluxTransformer2DModel.from_single_file(
        str(files.transformer), config=str(cfg / "transformer"), local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)
    from safetensors.torch import load_file

    # ae.sft is safetensors under another suffix, which diffusers would hand to torch.load.
    vae = AutoencoderKL.from_single_file(load_file(str(files.vae)), config=str(cfg / "vae"),
                                         local_files_only=True, torch_dtype=dtype)
    text_encoder = _load_transformers_encoder(CLIPTextModel, cfg / "text_encoder",
                                              files.clip_l, dtype)
    text_encoder_2 = _load_transformers_encoder(T5EncoderModel, cfg / "text_encoder_2",
                                                files.t5, dtype)
    pipe = FluxImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(cfg / "scheduler")),
        vae=vae, text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(cfg / "tokenizer")),
        text_encoder_2=text_encoder_2,
        tokenizer_2=T5TokenizerFast.from_pretrained(str(cfg / "tokenizer_2")),
        transformer=transformer)
    if memory_mode == "offload" and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
        pipe.vae.enable_tiling()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FluxTileEngine:
    """One pipeline, used for one tile at a time (a replica's GPU does one thing at once)."""

    def __init__(self, models_dir: Path, device: str | torch.device = "auto", dtype: str = "auto",
                 memory_mode: MemoryMode = "resident", max_sequence_length: int = 512):
        self.device = resolve_device(device)
        if dtype == "auto":
            use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        else:
            self.dtype = getattr(torch, dtype)
        self.memory_mode = memory_mode
        self.max_sequence_length = max_sequence_length
        with MODEL_BUILD_LOCK:
            self.pipe = load_flux_pipeline(models_dir, self.device, self.dtype, memory_mode)
        self._lock = threading.Lock()

    @classmethod
    def from_pipeline(cls, pipe, device: torch.device, dtype: torch.dtype) -> FluxTileEngine:
        """Wrap a pipeline built elsewhere (benchmarks with random full-size weights)."""
        engine = cls.__new__(cls)
        engine.device, engine.dtype, engine.pipe = device, dtype, pipe
        engine.memory_mode, engine.max_sequence_length = "resident", 512
        engine._lock = threading.Lock()
        return engine

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> PromptEmbeds:
        with self._lock:
            max_len = min(self.max_sequence_length, self.pipe.tokenizer_2.model_max_length)
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=max_len)
        return PromptEmbeds(embeds.float().cpu().numpy(), pooled.float().cpu().numpy())

    @torch.inference_mode()
    def redraw(self, crop: np.ndarray, embeds: PromptEmbeds, denoise: float, steps: int,
               guidance: float, seed: int,
               on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """img2img of one crop (H x W x 3 float [0, 1]); returns the same size.

        FLUX needs sides that are multiples of 16: the crop is reflect-padded and cut back.
        """
        h, w = crop.shape[:2]
        ph, pw = (-h) % FLUX_SIDE_MULTIPLE, (-w) % FLUX_SIDE_MULTIPLE
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
        if denoise <= 0:
            return crop
        generator = torch.Generator("cpu").manual_seed(seed)

        def step_end(_pipe, step, _t, kwargs):
            if on_step:
                on_step(step + 1)
            return kwargs

        with self._lock:
            out = self.pipe(
                image=x, height=h + ph, width=w + pw, strength=float(denoise),
                num_inference_steps=int(steps), guidance_scale=float(guidance),
                prompt_embeds=torch.from_numpy(embeds.prompt_embeds).to(self.device, self.dtype),
                pooled_prompt_embeds=torch.from_numpy(embeds.pooled).to(self.device, self.dtype),
                generator=generator, output_type="np", callback_on_step_end=step_end,
            ).images[0]
        return np.clip(out[:h, :w].astype(np.float32), 0, 1)

    def info(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "memory_mode": self.memory_mode}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- configs for the production files (FLUX.1-dev hyper-parameters; written by `models pull`) --
FLUX_SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256,
    "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
FLUX_DEV_CONFIGS: dict[str, dict] = {
    "scheduler/scheduler_config.json": FLUX_SCHEDULER_CONFIG,
    "transformer/config.json": {
        "_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
        "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
        "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768},
    "vae/config.json": {
        "_class_name": "AutoencoderKL", "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
        "latent_channels": 16, "layers_per_block": 2, "mid_block_add_attention": True,
        "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
        "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": False,
        "use_quant_conv": False},
    "text_encoder/config.json": {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
        "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408},
    "text_encoder_2/config.json": {
        "architectures": ["T5EncoderModel"], "model_type": "t5", "d_ff": 10240, "d_kv": 64,
        "d_model": 4096, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
        "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
        "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
        "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False, "vocab_size": 32128},
}
# Tokenizer files (small, not gated): CLIP-L's BPE and T5 v1.1's sentencepiece model.
FLUX_TOKENIZER_FILES: dict[str, tuple[str, list[str]]] = {
    "tokenizer": ("openai/clip-vit-large-patch14",
                  ["vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json"]),
    "tokenizer_2": ("google/t5-v1_1-xxl",
                    ["spiece.model", "tokenizer_config.json", "special_tokens_map.json"]),
}
