"""ESRGAN into an on-disk canvas (upscaler/compute/canvas.py): the same pixels as the in-memory
path (8 and 16 bits, alpha, integer uploads), and a big output through the canvas and the
streamed writers right at sampled tiles against the model run on each tile's input alone."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.images import photo
from helpers.model_factory import NANO, nano_engine
from helpers.sampled import model_region, png_rows, tiff_region

from upscaler.compute.canvas import OutputImage
from upscaler.compute.canvas_file import scratch_folder
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.compute.engines.esrgan import EsrganEngine
from upscaler.compute.images import DecodedImage, decode_image
from upscaler.compute.writers import write_output


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> EsrganEngine:
    return nano_engine(tmp_path_factory.mktemp("nano-models"), cpu_tile_size=128)


def source(bits: int, alpha: bool, side: int = 150) -> DecodedImage:
    rgb = np.asarray(photo("astronaut", (side, side)), dtype=np.float32) / 255.0
    if bits == 16:
        rgb = np.clip(rgb + np.linspace(0, 1 / 300, side, dtype=np.float32)[:, None, None],
                      0, 1)
    plane = np.linspace(0, 1, side * side, dtype=np.float32).reshape(side, side) if alpha \
        else None
    return DecodedImage(rgb, plane, "rgb", bits, None, "PNG")


@pytest.mark.parametrize("bits,alpha", [(8, False), (8, True), (16, True)])
def test_the_canvas_holds_what_the_in_memory_path_gives(engine, tmp_path, bits, alpha):
    image = source(bits, alpha)
    plan = calculate_output_dimensions(image.width, image.height, 4)
    memory = engine.upscale(image, NANO, plan).image
    with scratch_folder(tmp_path) as folder:
        canvas = engine.upscale(image, NANO, plan, canvas_dir=folder).image
        assert isinstance(canvas, OutputImage) and len(list(folder.iterdir())) == 1
        rows = np.concatenate([r for _, r in canvas.strips(50, with_alpha=True)])
        canvas.close()
    expected = memory.rgb if memory.alpha is None else np.dstack([memory.rgb, memory.alpha])
    assert rows.dtype == expected.dtype and np.array_equal(rows, expected)


def test_an_upload_decoded_as_integers_gives_the_same_output(engine, tmp_path):
    photo("rocket", (120, 90)).convert("RGBA").save(tmp_path / "in.png")
    data = (tmp_path / "in.png").read_bytes()
    floats, ints = decode_image(data, 10**6), decode_image(data, 10**6, integers=True)
    assert ints.rgb.dtype == np.uint8 and ints.alpha.dtype == np.uint8
    assert np.array_equal(ints.rgb / np.float32(255), floats.rgb)
    plan = calculate_output_dimensions(120, 90, 4)
    a, b = engine.upscale(floats, NANO, plan).image, engine.upscale(ints, NANO, plan).image
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.alpha, b.alpha)


@pytest.mark.parametrize("factor", [1, 0.5])
def test_an_integer_upload_that_no_model_pass_enlarges(engine, tmp_path, factor):
    """A factor of 1 or less runs no model pass: the upload's integers are resampled as
    floats (they once reached the resampler as uint8, a 500 the fuzz test found)."""
    photo("rocket", (120, 90)).save(tmp_path / "in.png")
    data = (tmp_path / "in.png").read_bytes()
    plan = calculate_output_dimensions(120, 90, factor)
    out = engine.upscale(decode_image(data, 10**6, integers=True), NANO, plan).image
    ref = engine.upscale(decode_image(data, 10**6), NANO, plan).image
    assert out.rgb.shape == (plan.output_height, plan.output_width, 3)
    assert np.array_equal(out.rgb, ref.rgb)


@pytest.mark.slow  # ~40 MP written twice (PNG and TIFF) and read back: tens of seconds
def test_a_big_output_is_right_at_sampled_tiles(engine, tmp_path):
    side = 1600  # 6400 x 6400 out: 41 MP
    image = decode_image(_png(photo("astronaut", (side, side)), tmp_path), 10**8, True)
    plan = calculate_output_dimensions(side, side, 4)
    rng = np.random.default_rng(3)
    spots = [(int(y) * 4, int(x) * 4) for y, x in rng.integers(0, side - 32, (6, 2))]
    spots += [(0, 0), (plan.output_height - 128, plan.output_width - 128)]
    with scratch_folder(tmp_path / "scratch") as folder:
        out = engine.upscale(image, NANO, plan, canvas_dir=folder).image
        write_output(out, "png", folder / "out.png", 300)
        write_output(out, "tiff", folder / "out.tiff", 300)
        out.close()
        wanted = {y for y0, _ in spots for y in range(y0, y0 + 128)}
        rows = {y: row for y, row in png_rows(folder / "out.png") if y in wanted}
        for y0, x0 in spots:
            expected = model_region(engine, image, NANO, 4, 40, y0, y0 + 128, x0, x0 + 128)
            assert np.array_equal(tiff_region(folder / "out.tiff", y0, y0 + 128, x0, x0 + 128),
                                  expected)
            png = np.stack([rows[y][x0:x0 + 128] for y in range(y0, y0 + 128)])
            assert np.array_equal(png, expected)


def _png(im, folder):
    im.save(folder / "upload.png", compress_level=1)
    return (folder / "upload.png").read_bytes()


@pytest.mark.parametrize("order,seam_fix", [("chess", "none"), ("parallel", "band_pass")])
def test_the_flux_blend_made_by_bands_is_the_whole_blend(tmp_path, order, seam_fix):
    from upscaler.compute.engines.usdu import blend_to_canvas, plan_tiles, redraw_tiles
    from upscaler.compute.quantize import quantize_plane

    image = source(8, True, side=150)
    rng = np.random.default_rng(1)
    tiles = plan_tiles(150, 150, 48, 16, order, seam_fix, seam_width=16)
    outputs: dict[int, np.ndarray] = {}
    reference = redraw_tiles(
        image.rgb, tiles, lambda crop, _: np.clip(crop + rng.normal(0, 0.05, crop.shape), 0, 1),
        4, color="none", on_tile=lambda tile, out: outputs.__setitem__(tile.index, out))
    out = blend_to_canvas(image, tiles, outputs, 4, tmp_path, rows=37)
    rows = np.concatenate([r for _, r in out.strips(50, with_alpha=True)])
    out.close()
    expected = np.dstack([quantize_plane(reference, 8), quantize_plane(image.alpha, 8)])
    assert np.array_equal(rows, expected)


@pytest.mark.parametrize("factor,alpha", [(3, True), (2.5, False), (6, True)])
def test_a_resampled_output_on_the_canvas_is_the_in_memory_one(engine, tmp_path, factor,
                                                               alpha):
    """Another factor than the model's (x3, x2.5 through a x4 model; x6 by two passes): the
    last pass kept in 16 bits on disk and resampled band by band as it is read gives the
    in-memory path's pixels, but for float rounding (at most one step, rarely)."""
    image = source(8, alpha, side=90)
    plan = calculate_output_dimensions(90, 90, factor)
    memory = engine.upscale(image, NANO, plan).image
    with scratch_folder(tmp_path) as folder:
        out = engine.upscale(image, NANO, plan, canvas_dir=folder).image
        rows = np.concatenate([r for _, r in out.strips(33, with_alpha=True)])
        out.close()
        assert list(folder.iterdir()) == []
    from upscaler.compute.quantize import quantize_plane

    expected = quantize_plane(memory.rgb if memory.alpha is None else np.dstack(
        [memory.rgb, memory.alpha]), 8)  # the in-memory path's floats, as the file has them
    diff = np.abs(rows.astype(int) - expected.astype(int))
    assert rows.shape == expected.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_band_weights_are_the_resamplers():
    from upscaler.compute.resample import resample_plane
    from upscaler.compute.resample_bands import FloatPlane, ResampledPlane

    plane = np.random.default_rng(5).random((97, 131, 3), dtype=np.float32)
    for height, width in ((300, 401), (40, 55), (97, 200)):
        whole = resample_plane(plane, height, width)
        bands = ResampledPlane(FloatPlane(plane), height, width, 16)
        got = np.concatenate([bands.read_rows(t, 17) for t in range(0, height, 17)])
        expected = (np.clip(whole, 0, 1) * 65535 + 0.5).astype(np.uint16)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
