"""ESRGAN engine without Ray: weight files in the real formats through the production loader,
real photos; the pretrained DAT-light's quality in the slow tier (its weights are pulled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.images import photo, psnr
from helpers.model_factory import DAT, REAL_DAT, write_compact, write_rrdb
from PIL import Image

from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.compute.engines.esrgan import EsrganEngine, UpscaleCancelled, choose_dtype
from upscaler.compute.engines.models import ModelCache, ModelRegistry
from upscaler.compute.engines.tiling import (
    QuantizedSink,
    TensorSink,
    axis_spans,
    count_tiles,
    plan_windows,
    run_tiled,
)
from upscaler.compute.images import DecodedImage
from upscaler.compute.passes import plan_passes
from upscaler.errors import UnknownModel, UnsupportedModel


def decoded(im) -> DecodedImage:
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return DecodedImage(arr, None, "rgb", 8, None, "PNG")


@pytest.fixture(scope="module")
def registry(upscale_models_dir) -> ModelRegistry:
    return ModelRegistry(upscale_models_dir)


@pytest.fixture(scope="module")
def engine(registry) -> EsrganEngine:
    return EsrganEngine(registry, device="cpu", context=16)


@pytest.fixture(scope="module")
def pretrained(real_models_root) -> EsrganEngine:
    """The engine with the real DAT-light x4 (slow tier: pulled on a cold cache)."""
    return EsrganEngine(ModelRegistry(real_models_root / "upscale_models"), device="cpu",
                        context=16)


# --- loading ---------------------------------------------------------------------------------

def test_registry_detects_architectures(registry):
    infos = {i.name: i for i in registry.list_info()[0]}
    assert infos[DAT].architecture == "DAT" and infos[DAT].scale == 4
    assert not infos[DAT].supports_half and infos[DAT].supports_bfloat16
    assert infos["tiny-rrdb"].architecture == "ESRGAN" and infos["tiny-rrdb"].supports_half
    assert infos["tiny-compact"].architecture == "RealESRGAN Compact"


def test_unknown_and_broken_models(registry, upscale_models_dir, tmp_path):
    with pytest.raises(UnknownModel, match=f"available models: .*{DAT}"):
        registry.info("4x-Nope")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    broken = ModelRegistry(tmp_path)
    with pytest.raises(UnsupportedModel, match="junk.pth"):
        broken.info("junk")
    assert broken.list_info()[1].keys() == {"junk"}


def test_torchscript_files_are_never_loaded(tmp_path):
    """A TorchScript .pt is a program (torch.jit.load runs it); it is listed as not loadable,
    saying which formats are, while the same weights as a .pth state dict load."""
    import torch
    from helpers.model_factory import write_rrdb

    from upscaler.compute.engines.models import load_descriptor

    pth = write_rrdb(tmp_path / "weights.pth")
    desc = load_descriptor(pth)
    torch.jit.trace(desc.model, torch.rand(1, 3, 8, 8)).save(str(tmp_path / "scripted.pt"))
    models = ModelRegistry(tmp_path)
    with pytest.raises(UnsupportedModel, match="TorchScript") as err:
        models.info("scripted")
    assert ".safetensors" in err.value.message and "weights_only" in err.value.message
    assert err.value.code == "unsafe_model_format"
    infos, errors = models.list_info()
    assert [i.name for i in infos] == ["weights"] and list(errors) == ["scripted"]


def test_model_cache_is_bounded_lru(registry):
    cache = ModelCache(registry, torch.device("cpu"), capacity=2)
    first = cache.get("tiny-rrdb", torch.float32)
    assert cache.get("tiny-rrdb", torch.float32) is first  # loaded once, reused
    cache.get("tiny-compact", torch.float32)
    cache.get(DAT, torch.float32)  # evicts tiny-rrdb, the least recently used
    assert cache.loaded_names() == sorted(["tiny-compact", DAT])


def test_precision_choice():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_dtype(cpu, True, True, True) == torch.float32
    assert choose_dtype(cuda, True, True, True) == torch.float16
    assert choose_dtype(cuda, True, True, False) == torch.float32
    if torch.cuda.is_available():  # bf16 for DAT-like models needs a card that has it
        assert choose_dtype(cuda, False, True, True) == torch.bfloat16


# --- tiling -----------------------------------------------------------------------------------

def tiled(image: torch.Tensor, fn, scale: int, tile: int, context: int, batch: int = 1):
    _, c, h, w = image.shape
    sink = TensorSink(c, h * scale, w * scale, torch.device("cpu"))
    written = torch.zeros(h * scale, w * scale)

    def put(y0, y1, x0, x1, core):
        sink.put(y0, y1, x0, x1, core)
        written[y0:y1, x0:x1] += 1

    run_tiled(image, fn, scale, tile, context, put, batch=batch)
    assert (written == 1).all()  # the cores partition the output
    return sink.result()


def nearest2(t: torch.Tensor) -> torch.Tensor:
    return t.repeat_interleave(2, -1).repeat_interleave(2, -2)


@pytest.mark.parametrize("h,w,tile,context", [(37, 53, 16, 4), (100, 64, 32, 8),
                                              (20, 20, 64, 8), (65, 129, 64, 16),
                                              (50, 51, 24, 0), (300, 17, 40, 64)])
def test_tiling_reassembles_exactly(h, w, tile, context):
    image = torch.rand(1, 3, h, w)
    out = tiled(image, nearest2, 2, tile, context)
    assert out.shape == (1, 3, 2 * h, 2 * w) and torch.equal(out, nearest2(image))


def test_windows_along_an_axis_have_one_size_and_hold_their_context():
    for length, tile, context in [(1000, 128, 32), (129, 64, 16), (64, 64, 40), (500, 7, 3)]:
        spans = axis_spans(length, tile, context)
        assert len({s.stop - s.start for s in spans}) == 1  # one batchable shape
        assert spans[0].core_start == 0 and spans[-1].core_stop == length
        for s in spans:
            assert s.core_stop - s.core_start <= tile
            assert s.start <= max(0, s.core_start - context)
            assert s.stop >= min(length, s.core_stop + context)
    assert count_tiles(64, 96, 64, 16) == len(plan_windows(64, 96, 64, 16)) == 2


def conv_stack(depth: int, seed: int = 0) -> torch.nn.Module:
    """``depth`` 3x3 convolutions: a receptive radius of ``depth`` px, then nearest x2."""
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="zeros") for _ in range(depth)]
    net = torch.nn.Sequential(*layers)
    return lambda t: nearest2(net(t).detach())


def test_enough_context_makes_tiles_exact_and_less_does_not():
    image = torch.rand(1, 3, 90, 70)
    fn = conv_stack(depth=6)
    whole = fn(image)
    assert torch.allclose(tiled(image, fn, 2, 24, context=6), whole, atol=1e-6)
    assert not torch.allclose(tiled(image, fn, 2, 24, context=3), whole, atol=1e-4)


def test_batches_of_windows_give_the_same_output():
    image = torch.rand(1, 3, 90, 70)
    fn = conv_stack(depth=4)
    one = tiled(image, fn, 2, 20, context=4, batch=1)
    assert torch.allclose(tiled(image, fn, 2, 20, context=4, batch=5), one, atol=1e-6)


def test_quantized_cores_are_the_quantized_float_output():
    from upscaler.compute.quantize import quantize_plane

    image = torch.rand(1, 3, 40, 30)
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        sink = QuantizedSink(3, 80, 60, bits, torch.device("cpu"))
        run_tiled(image, nearest2, 2, 16, 4, sink.put)
        out = sink.result()
        expected = quantize_plane(nearest2(image)[0].permute(1, 2, 0).numpy(), bits)
        assert out.dtype == dtype and np.array_equal(out, expected)


@pytest.mark.parametrize("writer,name", [
    (lambda p: write_rrdb(p, num_filters=16, num_blocks=4), "rrdb-16x4"),  # 4 blocks deep
    (lambda p: write_compact(p, num_feat=32, num_conv=16), "compact-32x16"),
])
def test_tiles_of_64_px_match_one_pass_of_a_real_format_model(tmp_path, writer, name):
    """Real on-disk formats through spandrel, with the production context table (RRDB 64 px,
    SRVGG compact 40 px) and tiles of 64 px: at least 60 dB from one untiled pass. The image
    is wider than a window (core and context on both sides, 192 px for RRDB), so the windows
    are cut inside the image and the context alone keeps the cores exact."""
    writer(tmp_path / f"{name}.pth")
    engine = EsrganEngine(ModelRegistry(tmp_path), device="cpu", cpu_tile_size=320)
    image = decoded(photo("astronaut", (320, 64)))
    plan = calculate_output_dimensions(320, 64, 4)
    whole = engine.upscale(image, name, plan, tile_size=1024, quantize=False)
    tiles = engine.upscale(image, name, plan, tile_size=64, quantize=False)
    assert whole.stats["tiles"] == 1 and tiles.stats["tiles"] == 5
    assert 64 + 2 * tiles.stats["context"] < 320
    assert psnr(tiles.image.rgb, whole.image.rgb) >= 60.0


@pytest.mark.slow  # the pretrained weights
def test_tiled_matches_untiled_on_real_model_and_photo(pretrained):
    """DAT-light (pretrained): channel attention sees the whole input, so no tiling is exact;
    16 px of context keeps tiles within 45 dB of one untiled pass."""
    image = decoded(photo("astronaut", (128, 64)))  # 56 dB
    plan = calculate_output_dimensions(128, 64, 4)
    whole = pretrained.upscale(image, REAL_DAT, plan, tile_size=1024, quantize=False)
    tiled_result = pretrained.upscale(image, REAL_DAT, plan, tile_size=64, quantize=False)
    assert whole.stats["tiles"] == 1 and tiled_result.stats["tiles"] == 2
    assert tiled_result.image.rgb.shape == (256, 512, 3)
    assert psnr(tiled_result.image.rgb, whole.image.rgb) >= 45.0


def test_context_is_what_makes_tiles_agree(registry):
    image = decoded(photo("coffee", (96, 32)))  # three windows: 0.61 of the error, +5.3 dB
    plan = calculate_output_dimensions(96, 32, 4)
    whole = EsrganEngine(registry, context=16).upscale(image, DAT, plan, tile_size=1024,
                                                        quantize=False)
    with_context = EsrganEngine(registry, context=16).upscale(image, DAT, plan, tile_size=32,
                                                               quantize=False)
    without = EsrganEngine(registry, context=0).upscale(image, DAT, plan, tile_size=32,
                                                         quantize=False)
    worst_with = np.percentile(np.abs(with_context.image.rgb - whole.image.rgb), 99.9)
    worst_without = np.percentile(np.abs(without.image.rgb - whole.image.rgb), 99.9)
    assert worst_with < 0.75 * worst_without
    assert psnr(with_context.image.rgb, whole.image.rgb) > \
        psnr(without.image.rgb, whole.image.rgb) + 1


@pytest.mark.slow  # the pretrained weights
def test_dat_beats_bicubic_on_a_real_photo(pretrained):
    """The real pretrained model restores detail: better PSNR against the original than bicubic."""
    original = photo("chelsea", (256, 192))
    small = original.resize((64, 48), Image.BICUBIC)
    plan = calculate_output_dimensions(64, 48, 4)
    out = pretrained.upscale(decoded(small), REAL_DAT, plan).image.rgb
    assert out.dtype == np.uint8  # as the file will hold it: the model's own 4x is the plan
    bicubic = np.asarray(small.resize((256, 192), Image.BICUBIC))
    reference = np.asarray(original)
    assert psnr(out, reference) > psnr(bicubic, reference) + 0.5


# --- sizes, passes, channels -------------------------------------------------------------------

def passes(factor: float, scale: int, side: int, max_passes: int, max_pixels: int) -> int:
    out = round(side * factor)
    return plan_passes(side, side, out, out, scale, max_passes, max_pixels).passes


def test_plan_passes():
    assert passes(4, 4, 100, 3, 10**9) == 1
    assert passes(2, 4, 100, 3, 10**9) == 1  # one pass, then downscale
    assert passes(6, 4, 100, 3, 10**9) == 1  # rest 1.5 < 2: resample
    assert passes(8, 4, 100, 3, 10**9) == 2
    assert passes(16, 4, 100, 3, 10**9) == 2
    assert passes(64, 4, 100, 2, 10**9) == 2  # capped by max_passes
    assert passes(16, 4, 1000, 3, 10**6 * 20) == 1  # 16x would be too many pixels
    assert passes(0.5, 4, 100, 3, 10**9) == 0
    assert passes(3, 1, 100, 3, 10**9) == 1  # 1x restoration model


@pytest.mark.parametrize("factor,expected_passes", [(2, 1), (3.5, 1), (8, 2)])
def test_exact_output_size_for_any_factor(engine, factor, expected_passes):
    image = decoded(photo("rocket", (24, 18)))
    plan = calculate_output_dimensions(24, 18, factor)
    result = engine.upscale(image, "tiny-rrdb", plan)
    assert result.image.rgb.shape[:2] == (plan.output_height, plan.output_width)
    assert result.stats["passes"] == expected_passes


def test_print_size_with_crop_applied(engine):
    """The engine fills the print; the applied crop cuts the centred box (where results are
    written, for every engine)."""
    image = decoded(photo("astronaut", (40, 40)))
    plan = calculate_output_dimensions(40, 40, None, 30, 4, 3, crop_to_target=True)
    result = engine.upscale(image, "tiny-compact", plan)
    assert result.image.rgb.shape[:2] == (120, 120)
    cropped = result.image.cropped(plan.applied_crop_box)
    assert cropped.rgb.shape[:2] == (90, 120)
    assert np.array_equal(cropped.rgb, result.image.rgb[15:105])


def test_alpha_and_gray_are_kept(engine):
    rgb = np.asarray(photo("astronaut", (32, 24)), dtype=np.float32) / 255
    alpha = np.linspace(0, 1, 32 * 24, dtype=np.float32).reshape(24, 32)
    image = DecodedImage(rgb, alpha, "rgb", 8, None, "PNG")
    plan = calculate_output_dimensions(32, 24, 2)
    result = engine.upscale(image, "tiny-rrdb", plan)
    assert result.image.alpha.shape == (48, 64)
    assert abs(float(result.image.alpha.mean()) - float(alpha.mean())) < 0.01


def test_progress_and_cancel(engine):
    image = decoded(photo("coffee", (96, 64)))
    plan = calculate_output_dimensions(96, 64, 4)
    seen = []
    engine.upscale(image, "tiny-rrdb", plan, tile_size=64,
                   progress=lambda d, t: seen.append((d, t)))
    total = count_tiles(64, 96, 64, 16)
    assert seen == [(i, total) for i in range(1, total + 1)]
    with pytest.raises(UpscaleCancelled):
        engine.upscale(image, "tiny-rrdb", plan, tile_size=64,
                       should_stop=lambda: len(seen) > total + 1,
                       progress=lambda d, t: seen.append((d, t)))


def test_out_of_memory_halves_the_tile(registry, monkeypatch):
    """A (simulated) CUDA OOM on big tiles: the engine retries the pass with half the tile."""
    engine = EsrganEngine(registry, context=8)
    real_fn = engine._model_fn

    def limited(loaded):
        fn = real_fn(loaded)

        def run(tile):
            if max(tile.shape[-2:]) > 32:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return fn(tile)

        return run

    monkeypatch.setattr(engine, "_model_fn", limited)
    image = decoded(photo("rocket", (64, 48)))
    plan = calculate_output_dimensions(64, 48, 4)
    # 128 -> 64 -> 32 would go below MIN_TILE (64): the error surfaces after one retry.
    with pytest.raises(torch.OutOfMemoryError):
        engine.upscale(image, "tiny-rrdb", plan, tile_size=128)
    monkeypatch.setattr("upscaler.compute.engines.esrgan.MIN_TILE", 16)
    # Windows are the tile and 8 px of context on each side: 16 px tiles make 32 px ones.
    result = engine.upscale(image, "tiny-rrdb", plan, tile_size=128)
    assert result.stats["oom_retries"] == 3 and result.stats["tile_size"] == 16
    assert result.image.rgb.shape == (192, 256, 3)


def test_cpu_allocator_out_of_memory_halves_the_tile_too(registry, monkeypatch):
    """The CPU allocator's error is a RuntimeError of its own wording: handled like CUDA's."""
    engine = EsrganEngine(registry, context=8)
    real_fn = engine._model_fn
    monkeypatch.setattr("upscaler.compute.engines.esrgan.MIN_TILE", 16)

    def limited(loaded):
        fn = real_fn(loaded)

        def run(tile):
            if max(tile.shape[-2:]) > 32:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: "
                                   "can't allocate memory: you tried to allocate 9663676416 "
                                   "bytes. Error code 12 (Cannot allocate memory)")
            return fn(tile)

        return run

    monkeypatch.setattr(engine, "_model_fn", limited)
    result = engine.upscale(decoded(photo("rocket", (64, 48))), "tiny-rrdb",
                            calculate_output_dimensions(64, 48, 4), tile_size=64)
    assert result.stats["oom_retries"] == 2 and result.stats["tile_size"] == 16


def test_a_clients_tile_size_cannot_pass_the_cpu_bound(registry):
    """On the CPU the tile bounds host memory: a request's 4096 px tile is clamped to it."""
    engine = EsrganEngine(registry, cpu_tile_size=64, context=8)
    result = engine.upscale(decoded(photo("rocket", (96, 80))), "tiny-compact",
                            calculate_output_dimensions(96, 80, 4), tile_size=4096)
    assert result.stats["tile_size"] == 64 and result.stats["tiles"] > 1
