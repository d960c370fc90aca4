"""Tiny FLUX model files in the real on-disk formats, written at test time.

* transformer, two kinds:
  - ``real_width=True``: a Q8_0 GGUF in the community (city96) layout: original BFL key names,
    no prefix, 1-D tensors F32, small/embedding 2-D tensors F16, the rest Q8_0. diffusers'
    converter for that layout hard-codes the width (3072) and MLP ratio (4), so the file has
    the real width with one double and one single block (~530 M parameters, ~560 MB, seconds
    per tile on a CPU): what the production loader's conversion path is tested with, once;
  - the default: the same GGUF format (Q8_0 where the row length allows) with diffusers' own
    key names at a tiny width, which the same loader reads without conversion: a whole job in
    seconds, for the tests of everything around the model;
* VAE: the BFL autoencoder single-file layout (encoder.down.N.block.M..., mid.attn_1 with 1x1
  conv weights), tiny channels, 4 levels (scale factor 8) and 16 latent channels like FLUX's;
* CLIP-L and T5: tiny encoders in the transformers key layout of ComfyUI's files, T5 in fp8;
* flux/: configs and tokenizers in the layout `upscaler models pull flux` produces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

WIDTH, HEAD_DIM, MLP = 3072, 128, 4 * 3072
TEXT_DIM = 32  # tiny CLIP hidden size and T5 d_model
HIGH_PRECISION = ("img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer")


def _bfl_transformer_shapes(in_ch: int = 64, text_dim: int = TEXT_DIM, pooled_dim: int = TEXT_DIM,
                            double: int = 1, single: int = 1) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {
        "img_in.weight": (WIDTH, in_ch), "img_in.bias": (WIDTH,),
        "txt_in.weight": (WIDTH, text_dim), "txt_in.bias": (WIDTH,),
        "final_layer.linear.weight": (in_ch, WIDTH), "final_layer.linear.bias": (in_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * WIDTH, WIDTH),
        "final_layer.adaLN_modulation.1.bias": (2 * WIDTH,),
    }
    for name, fan_in in (("time_in", 256), ("vector_in", pooled_dim), ("guidance_in", 256)):
        shapes |= {f"{name}.in_layer.weight": (WIDTH, fan_in), f"{name}.in_layer.bias": (WIDTH,),
                   f"{name}.out_layer.weight": (WIDTH, WIDTH), f"{name}.out_layer.bias": (WIDTH,)}
    for i in range(double):
        shapes |= _double_block(f"double_blocks.{i}")
    for i in range(single):
        shapes |= _single_block(f"single_blocks.{i}")
    return shapes


def _double_block(b: str) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for s in ("img", "txt"):
        shapes |= {
            f"{b}.{s}_mod.lin.weight": (6 * WIDTH, WIDTH), f"{b}.{s}_mod.lin.bias": (6 * WIDTH,),
            f"{b}.{s}_attn.qkv.weight": (3 * WIDTH, WIDTH), f"{b}.{s}_attn.qkv.bias": (3 * WIDTH,),
            f"{b}.{s}_attn.norm.query_norm.scale": (HEAD_DIM,),
            f"{b}.{s}_attn.norm.key_norm.scale": (HEAD_DIM,),
            f"{b}.{s}_attn.proj.weight": (WIDTH, WIDTH), f"{b}.{s}_attn.proj.bias": (WIDTH,),
            f"{b}.{s}_mlp.0.weight": (MLP, WIDTH), f"{b}.{s}_mlp.0.bias": (MLP,),
            f"{b}.{s}_mlp.2.weight": (WIDTH, MLP), f"{b}.{s}_mlp.2.bias": (WIDTH,),
        }
    return shapes


def _single_block(b: str) -> dict[str, tuple]:
    return {
        f"{b}.linear1.weight": (3 * WIDTH + MLP, WIDTH), f"{b}.linear1.bias": (3 * WIDTH + MLP,),
        f"{b}.linear2.weight": (WIDTH, WIDTH + MLP), f"{b}.linear2.bias": (WIDTH,),
        f"{b}.norm.query_norm.scale": (HEAD_DIM,), f"{b}.norm.key_norm.scale": (HEAD_DIM,),
        f"{b}.modulation.lin.weight": (3 * WIDTH, WIDTH), f"{b}.modulation.lin.bias": (3 * WIDTH,),
    }


def write_transformer_gguf(path: Path, seed: int = 0, text_dim: int = TEXT_DIM,
                           pooled_dim: int = TEXT_DIM, double: int = 1, single: int = 1) -> Path:
    """``double=19, single=38, text_dim=4096, pooled_dim=768`` is FLUX.1-dev's full size."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    shapes = _bfl_transformer_shapes(text_dim=text_dim, pooled_dim=pooled_dim, double=double,
                                     single=single)
    for name, shape in shapes.items():
        if name.endswith(".scale"):
            data = np.ones(shape, np.float32)
        else:
            fan_in = shape[-1] if len(shape) == 2 else 1
            std = 0.0 if len(shape) == 1 else 0.5 / np.sqrt(fan_in)
            data = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        if len(shape) == 1:
            writer.add_tensor(name, data)
        elif name.startswith(HIGH_PRECISION) or shape[-1] % 32 or data.size < 1024:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "latent_channels": 16,
    "norm_num_groups": 4, "sample_size": 64, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
    "act_fn": "silu", "force_upcast": True,
}


def _diffusers_vae_to_bfl(state: dict[str, torch.Tensor], levels: int) -> dict:
    """Inverse of diffusers' convert_ldm_vae_checkpoint, for the BFL ae layout."""
    out = {}
    for key, value in state.items():
        k = key
        for i in range(levels):
            k = k.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0.",
                          f"encoder.down.{i}.downsample.")
            k = k.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0.",
                          f"decoder.up.{levels - 1 - i}.upsample.")
        for part in ("encoder", "decoder"):
            k = k.replace(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
            k = k.replace(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
            k = k.replace(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")
            k = k.replace(f"{part}.conv_norm_out.", f"{part}.norm_out.")
        k = k.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in k:
            k = (k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.")
                 .replace("to_v.", "v.").replace("to_out.0.", "proj_out."))
            if value.dim() == 2:
                value = value[:, :, None, None]
        out[k] = value.contiguous()
    return out


def write_vae(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**{k: v for k, v in VAE_CONFIG.items() if k != "_class_name"})
    save_file(_diffusers_vae_to_bfl(vae.state_dict(), 4), str(path))
    return path


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: the base alphabet of their BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_text_encoders(clip_path: Path, t5_path: Path, flux_dir: Path, seed: int = 0) -> None:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    torch.manual_seed(seed)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    clip_tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    clip_tok.save_pretrained(str(flux_dir / "tokenizer"))
    clip_cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=TEXT_DIM, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=4,
                              max_position_embeddings=77, projection_dim=TEXT_DIM,
                              bos_token_id=vocab["<|startoftext|>"],
                              eos_token_id=vocab["<|endoftext|>"], pad_token_id=1)
    clip_cfg.save_pretrained(str(flux_dir / "text_encoder"))
    save_file({k: v.contiguous() for k, v in CLIPTextModel(clip_cfg).state_dict().items()},
              str(clip_path))

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-"]
    t5_tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=32)
    t5_tok.save_pretrained(str(flux_dir / "tokenizer_2"))
    t5_cfg = T5Config(vocab_size=len(pieces), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1,
                      num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                      use_cache=False, tie_word_embeddings=False)
    t5_cfg.save_pretrained(str(flux_dir / "text_encoder_2"))
    state = T5EncoderModel(t5_cfg).state_dict()
    state.pop("encoder.embed_tokens.weight", None)  # tied to shared, not stored in the file
    save_file({k: v.to(torch.float8_e4m3fn).contiguous() for k, v in state.items()},
              str(t5_path))


TINY_HEADS, TINY_HEAD_DIM, TINY_ROPE = 2, 32, [8, 12, 12]


def write_tiny_transformer_gguf(path: Path, seed: int = 0) -> dict:
    """A FluxTransformer2DModel of tiny width in diffusers' key layout, as a GGUF file;
    returns its config."""
    import gguf
    from diffusers import FluxTransformer2DModel

    config = {"attention_head_dim": TINY_HEAD_DIM, "axes_dims_rope": TINY_ROPE,
              "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": TEXT_DIM,
              "num_attention_heads": TINY_HEADS, "num_layers": 1, "num_single_layers": 1,
              "patch_size": 1, "pooled_projection_dim": TEXT_DIM}
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**config)
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if data.ndim == 2 and data.shape[-1] % 32 == 0 and data.size >= 1024:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data.astype(np.float16 if data.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"_class_name": "FluxTransformer2DModel", **config}


def write_flux_models(root: Path, real_width: bool = False) -> Path:
    """The whole FLUX set under ``root`` (a models folder), tiny but for the transformer's
    width when ``real_width``. Returns root."""
    from upscaler.compute.engines.flux import FLUX_SCHEDULER_CONFIG, write_json

    flux_dir = root / "flux"
    (root / "unet").mkdir(parents=True, exist_ok=True)
    (root / "vae").mkdir(parents=True, exist_ok=True)
    (root / "clip").mkdir(parents=True, exist_ok=True)
    gguf_path = root / "unet" / "flux1-dev-Q8_0.gguf"
    if real_width:
        write_transformer_gguf(gguf_path)
        transformer_config = {
            "_class_name": "FluxTransformer2DModel", "attention_head_dim": HEAD_DIM,
            "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
            "joint_attention_dim": TEXT_DIM, "num_attention_heads": WIDTH // HEAD_DIM,
            "num_layers": 1, "num_single_layers": 1, "patch_size": 1,
            "pooled_projection_dim": TEXT_DIM}
    else:
        transformer_config = write_tiny_transformer_gguf(gguf_path)
    write_vae(root / "vae" / "ae.sft")
    write_text_encoders(root / "clip" / "clip_l.safetensors",
                        root / "clip" / "t5xxl_fp8_e4m3fn.safetensors", flux_dir)
    write_json(flux_dir / "vae" / "config.json", VAE_CONFIG)
    write_json(flux_dir / "scheduler" / "scheduler_config.json", FLUX_SCHEDULER_CONFIG)
    write_json(flux_dir / "transformer" / "config.json", transformer_config)
    return root
