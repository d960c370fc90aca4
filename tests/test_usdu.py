"""Ultimate SD Upscale tiling: exact reassembly, resume without recompute, colour fix."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.images import photo, psnr

from upscaler.compute.engines.usdu import (
    TiledCanvas,
    TileSchedule,
    color_fix,
    plan_tiles,
    redraw_tiles,
    render_crop,
    replay,
    waves,
)


def source(h: int, w: int) -> np.ndarray:
    return np.asarray(photo("coffee", (w, h)), dtype=np.float32) / 255


def identity(crop, tile):
    return crop


@pytest.mark.parametrize("h,w,tile", [(97, 131, 32), (64, 64, 64), (50, 170, 48), (33, 17, 16)])
@pytest.mark.parametrize("padding,mask_blur", [(0, 0), (8, 2), (32, 8), (16, 8)])
@pytest.mark.parametrize("order", ["parallel", "chess"])
def test_identity_redraw_reproduces_input(h, w, tile, padding, mask_blur, order):
    image = source(h, w)
    tiles = plan_tiles(h, w, tile, padding, order)
    out = redraw_tiles(image, tiles, identity, mask_blur, color="wavelet")
    assert out.shape == image.shape
    assert psnr(out, image) >= 60


def test_seam_fix_bands_keep_identity_exact():
    image = source(96, 128)
    tiles = plan_tiles(96, 128, 32, 16, "chess", seam_fix="band_pass", seam_width=16)
    assert [len(w) for w in waves(tiles)] == [6, 6, 3 * 3 + 2 * 4]
    assert psnr(redraw_tiles(image, tiles, identity, 8), image) >= 60


def test_tiles_cover_grid_and_crops_stay_inside():
    tiles = plan_tiles(100, 70, 32, 16)
    assert len(tiles) == 4 * 3  # rows = ceil(100/32), cols = ceil(70/32), as USDU
    for t in tiles:
        cy0, cy1, cx0, cx1 = t.crop
        y0, y1, x0, x1 = t.rect
        assert 0 <= cy0 <= y0 < y1 <= cy1 <= 100 and 0 <= cx0 <= x0 < x1 <= cx1 <= 70
        assert (cy1 - cy0, cx1 - cx0) == (64, 64)  # uniform crops, shifted at the borders


def test_chess_second_wave_sees_first_wave():
    image = source(64, 64)
    tiles = plan_tiles(64, 64, 32, 16, "chess")
    seen = {}

    def darken(crop, tile):
        seen[tile.index] = crop.copy()
        return crop * 0.5

    redraw_tiles(image, tiles, darken, 4, color="none")
    # Tile 1 (wave 1; its crop is the whole 64x64 image) sees tile 0 (wave 0) darkened.
    assert seen[1][:16, :16].mean() < 0.6 * image[:16, :16].mean()
    assert np.allclose(seen[0], image)  # wave 0 starts from the source


def test_resume_computes_only_missing_tiles_and_matches():
    image = source(80, 80)
    tiles = plan_tiles(80, 80, 32, 16, "chess")
    rng_redraw = lambda crop, tile: np.clip(crop + 0.05 * np.sin(crop * 7 + tile.index), 0, 1)  # noqa: E731
    finished = {}
    full = redraw_tiles(image, tiles, rng_redraw, 8,
                        on_tile=lambda t, out: finished.__setitem__(t.index, out))
    assert len(finished) == len(tiles) == 9
    k = 4
    done = {i: finished[i] for i in list(finished)[:k]}
    computed = []
    resumed = redraw_tiles(image, tiles, rng_redraw, 8, done=done,
                           on_tile=lambda t, out: computed.append(t.index))
    assert len(computed) == len(tiles) - k and not set(computed) & set(done)
    assert np.array_equal(resumed, full)


def textured(crop, tile):
    """A redraw whose output depends on every pixel of its crop, as FLUX's does."""
    return np.clip(crop * 0.8 + 0.1 * np.sin(crop.sum(-1, keepdims=True) * 9 + tile.index), 0, 1)


def scheduled(image, tiles, redraw, mask_blur, color, seed, done=None):
    """The coordinator's way: tiles start as soon as the tiles they need are drawn and finish
    in any order (here a random one), crops cut by replaying their window only."""
    rng = np.random.default_rng(seed)
    outputs = dict(done or {})
    schedule, running, computed = TileSchedule(tiles, outputs), {}, []
    while not schedule.finished:
        for tile in schedule.take_ready():
            assert schedule.needs[tile.index] <= set(outputs)
            running[tile.index] = render_crop(image, tiles, outputs, tile, mask_blur)
        index = list(running)[rng.integers(len(running))]
        crop = running.pop(index)
        outputs[index] = color_fix(redraw(crop, schedule.tiles[index]), crop, color)
        computed.append(index)
        schedule.finish(index)
    return replay(TiledCanvas(image, mask_blur), tiles, outputs).image(), computed


@pytest.mark.parametrize("h,w,tile,padding,mask_blur", [
    (97, 131, 32, 8, 2), (128, 192, 64, 16, 4), (50, 170, 48, 16, 8), (80, 80, 32, 16, 8)])
@pytest.mark.parametrize("order,seam_fix", [("chess", "none"), ("parallel", "none"),
                                            ("chess", "band_pass"), ("parallel", "band_pass")])
def test_tiles_started_early_and_finished_in_any_order_give_the_reference_bit_for_bit(
        h, w, tile, padding, mask_blur, order, seam_fix):
    image = source(h, w)
    tiles = plan_tiles(h, w, tile, padding, order, seam_fix, seam_width=16)
    reference = redraw_tiles(image, tiles, textured, mask_blur, color="wavelet")
    for seed in range(3):
        out, _ = scheduled(image, tiles, textured, mask_blur, "wavelet", seed)
        assert np.array_equal(out, reference)


def test_schedule_starts_a_later_wave_tile_once_the_tiles_reaching_its_crop_are_drawn():
    tiles = plan_tiles(128, 192, 64, 16, "chess")  # 2 x 3 tiles: 0 2 4 | 1 3 5 by wave
    schedule = TileSchedule(tiles)
    assert {i: sorted(n) for i, n in schedule.needs.items() if n} == {
        1: [0, 2, 4], 3: [0, 4], 5: [2, 4]}
    # The centre tile unblocks all of the second wave: on two replicas it goes first.
    assert [t.index for t in schedule.take_ready()] == [4, 0, 2]
    schedule.finish(4)
    assert schedule.take_ready() == []
    schedule.finish(0)
    assert [t.index for t in schedule.take_ready()] == [3]  # tile 2 is still being drawn
    schedule.finish(2)
    assert [t.index for t in schedule.take_ready()] == [1, 5]
    for i in (3, 1, 5):
        schedule.finish(i)
    assert schedule.finished


def test_scheduled_resume_computes_only_missing_tiles_and_matches():
    image = source(80, 80)
    tiles = plan_tiles(80, 80, 32, 16, "chess")
    outputs = {}
    full, order = scheduled(image, tiles, lambda c, t: outputs.setdefault(t.index, textured(c, t)),
                            8, "none", seed=0)
    # The first tiles a run finished (what storage holds after a crash): the rest are drawn,
    # in another order, and the image is the same.
    done = {i: outputs[i] for i in order[:5]}
    resumed, computed = scheduled(image, tiles, textured, 8, "none", seed=1, done=done)
    assert sorted(computed) == sorted(set(range(len(tiles))) - set(done))
    assert np.array_equal(resumed, full)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_color_fix_removes_tile_tint(method):
    crop = source(64, 64)
    tinted = np.clip(crop * 0.9 + np.array([0.12, 0.0, -0.05], np.float32), 0, 1)
    fixed = color_fix(tinted, crop, method)
    assert np.abs(fixed.mean((0, 1)) - crop.mean((0, 1))).max() < 0.01
    assert psnr(fixed, crop) > psnr(tinted, crop) + 6
    # Detail the redraw added survives the wavelet fix (it only swaps low frequencies).
    if method == "wavelet":
        detail = crop.copy()
        detail[::2, ::2] += 0.1
        assert np.abs(color_fix(detail, crop, "wavelet") - crop).max() > 0.05
