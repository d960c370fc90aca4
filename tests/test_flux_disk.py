"""The FLUX coordinator's image on disk (upscaler/compute/engines/usdu_disk.py): the pre-pass in
float16 canvases and the tiles in files give the in-memory path's crops and blend bit for bit,
and the pre-pass stored for resumes is the npz it always was."""

from __future__ import annotations

import io

import numpy as np
import pytest

from upscaler.compute.canvas_file import Canvas
from upscaler.compute.engines.usdu import (
    TileSchedule,
    blend_to_canvas,
    color_fix,
    plan_tiles,
    render_crop,
)
from upscaler.compute.engines.usdu_disk import (
    TileFiles,
    image_to_disk,
    read_npz,
    write_npz,
)
from upscaler.compute.images import DecodedImage


def _image(height: int, width: int, alpha: bool, bits: int = 8) -> DecodedImage:
    rng = np.random.default_rng(3)
    rgb = rng.random((height, width, 3), np.float32)
    return DecodedImage(rgb, rng.random((height, width), np.float32) if alpha else None,
                        "rgb", bits, b"icc" if alpha else None, "PNG")


def _half(image: DecodedImage) -> DecodedImage:
    """What the coordinator used to hold: the pre-pass stored in float16, made float32."""
    def half(a):
        return a.astype(np.float16).astype(np.float32)

    return DecodedImage(half(image.rgb), None if image.alpha is None else half(image.alpha),
                        image.color, image.bit_depth, image.icc_profile, image.source_format)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_a_canvas_block_is_the_rows_window(tmp_path):
    with Canvas(tmp_path, 40, 30, 3, np.float16) as canvas:
        data = np.random.default_rng(0).random((40, 30, 3)).astype(np.float16)
        canvas.write_rows(0, data)
        assert np.array_equal(canvas.block(5, 33, 7, 19), data[5:33, 7:19])
        assert np.array_equal(canvas.block(0, 40, 0, 30), data)


@pytest.mark.parametrize("alpha", [True, False])
def test_the_stored_prepass_is_the_npz_it_was_and_reads_back(tmp_path, alpha):
    image = _image(300, 70, alpha, 16)  # more rows than one copy band
    disk = image_to_disk(image, tmp_path)
    write_npz(disk, tmp_path / "p.npz")
    arrays = np.load(tmp_path / "p.npz", allow_pickle=False)
    assert np.array_equal(arrays["rgb"], image.rgb.astype(np.float16))
    assert arrays["meta"].item() == "rgb|16|PNG"
    if alpha:
        assert np.array_equal(arrays["alpha"], image.alpha.astype(np.float16))
    else:
        assert arrays["alpha"].size == 0
    # An npz stored whole by np.savez (before this) reads back the same.
    np.savez(tmp_path / "old.npz", **{k: arrays[k] for k in arrays.files})
    for path in (tmp_path / "p.npz", tmp_path / "old.npz"):
        with open(path, "rb") as f:
            back = read_npz(f, tmp_path)
        assert np.array_equal(back.rgb.read_rows(0, 300), arrays["rgb"])
        assert (back.alpha is None) == (not alpha)
        if alpha:
            assert np.array_equal(back.alpha.read_rows(0, 300)[..., 0], arrays["alpha"])
        assert (back.color, back.bit_depth, back.icc_profile) == ("rgb", 16, image.icc_profile)


@pytest.mark.parametrize("order,seam_fix", [("chess", "none"), ("parallel", "band_pass"),
                                            ("chess", "band_pass")])
def test_crops_and_blend_from_disk_are_the_in_memory_ones(tmp_path, order, seam_fix):
    """The coordinator's steps (crops cut as tiles become ready, tiles kept, the blend by
    bands) from the canvases and tile files, against the in-memory float16 pre-pass."""
    from upscaler.compute.quantize import quantize_plane

    image = _image(150, 130, True)
    memory = _half(image)
    disk = image_to_disk(image, tmp_path)
    tiles = plan_tiles(150, 130, 48, 16, order, seam_fix, seam_width=16)
    schedule, in_memory = TileSchedule(tiles), {}
    files = TileFiles(tmp_path / "tiles")
    rng = np.random.default_rng(5)
    while not schedule.finished:
        for tile in schedule.take_ready():
            crop = render_crop(disk.rgb, tiles, files, tile, 4)
            assert np.array_equal(crop, render_crop(memory.rgb, tiles, in_memory, tile, 4))
            redrawn = np.clip(crop + rng.normal(0, 0.05, crop.shape), 0, 1).astype(np.float32)
            out = color_fix(redrawn, crop, "wavelet").astype(np.float16)
            in_memory[tile.index] = out
            files.put_npy(tile.index, _npy(out))
            schedule.finish(tile.index)
    assert sorted(files) == sorted(in_memory) and len(files) == len(tiles)
    got = blend_to_canvas(disk, tiles, files, 4, tmp_path, rows=37)
    want = blend_to_canvas(memory, tiles, in_memory, 4, tmp_path, rows=256)
    rows_got = np.concatenate([r for _, r in got.strips(50, with_alpha=True)])
    rows_want = np.concatenate([r for _, r in want.strips(50, with_alpha=True)])
    assert np.array_equal(rows_got, rows_want)
    assert np.array_equal(rows_want[..., 3], quantize_plane(memory.alpha, 8))
    got.close()
    want.close()


def test_the_coordinator_reserves_its_floor_or_the_crops_in_flight():
    """A floor per output pixel, or, where more, the crops of the largest wave waiting for
    replicas (wide padding, every tile at once), plus one crop's or band's work."""
    from upscaler.compute.dimensions import calculate_output_dimensions
    from upscaler.compute.memory import (
        COORDINATOR_BYTES_PER_PIXEL,
        CROP_BYTES_PER_PIXEL,
        coordinator_bytes,
    )

    plan = calculate_output_dimensions(1024, 1024, 4)
    px = plan.output_width * plan.output_height
    chess = coordinator_bytes(plan)
    assert px * COORDINATOR_BYTES_PER_PIXEL < chess < px * 2 * COORDINATOR_BYTES_PER_PIXEL
    wide = coordinator_bytes(plan, 256, 128, "parallel")
    assert wide > px * 4 * CROP_BYTES_PER_PIXEL  # each crop is 4x its tile
