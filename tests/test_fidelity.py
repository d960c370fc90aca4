"""The fidelity report's compute (upscaler.compute.fidelity) on arrays and real photos: exact
area averaging whatever the strips, CIEDE2000 as scikit-image gives it, the seam score, the
heat map; and its contract (upscaler.domain.quality) as jobs carry it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers.images import photo

from upscaler.compute.engines.tiling import axis_spans
from upscaler.compute.fidelity import (
    AreaAverager,
    TileGrid,
    array_strips,
    delta_e_map,
    esrgan_grid,
    measure_fidelity,
    single_tile,
    usdu_grid,
)
from upscaler.domain.jobs import Completed, JobRecord
from upscaler.domain.quality import Quality


def dense_area_average(out: np.ndarray, in_h: int, in_w: int) -> np.ndarray:
    """The reference: explicit overlap weights of every output pixel on every input pixel."""
    def weights(n_out: int, n_in: int) -> np.ndarray:
        s = n_out / n_in
        lo, hi = np.arange(n_in)[:, None] * s, (np.arange(n_in)[:, None] + 1) * s
        r = np.arange(n_out)[None, :]
        return np.clip(np.minimum(hi, r + 1) - np.maximum(lo, r), 0, None) / s
    return np.einsum("ir,rcx,jc->ijx", weights(out.shape[0], in_h), out.astype(np.float64),
                     weights(out.shape[1], in_w))


@pytest.mark.parametrize("out_size,in_size,strip", [
    ((40, 60), (10, 15), 7), ((37, 53), (10, 15), 5), ((30, 45), (13, 7), 64),
    ((12, 12), (12, 12), 1), ((25, 31), (30, 40), 4)])
def test_area_average_is_exact_for_any_factor_and_strips(out_size, in_size, strip):
    out = np.random.default_rng(0).random((*out_size, 3)).astype(np.float32)
    averager = AreaAverager(*out_size, *in_size)
    for top, rows in array_strips(out, strip):
        averager.add(top, rows)
    np.testing.assert_allclose(averager.result, dense_area_average(out, *in_size), atol=1e-6)


def test_an_untiled_upscale_of_a_photo_has_little_drift_and_no_seams():
    from PIL import Image

    im = photo("chelsea", (300, 200))
    src, big = np.asarray(im) / 255.0, np.asarray(im.resize((1200, 800), Image.LANCZOS))
    report = measure_fidelity(src, array_strips(big, 50), 800, 1200, usdu_grid(800, 1200, 256))
    assert report.delta_e_mean < 1.0 and report.delta_e_p95 < 2.5
    assert report.grid == (4, 5) and len(report.tiles) == 20
    assert report.tiles[6].box == (256, 256, 512, 512)
    # The grid is only imagined on this image: 1 within the content's own spread.
    assert 0.85 < report.seam_score < 1.15
    exact = np.repeat(np.repeat(np.asarray(im), 4, 0), 4, 1)  # box-averages back exactly
    assert measure_fidelity(src, array_strips(exact, 7), 800, 1200).delta_e_mean < 1e-3


def test_delta_e_is_ciede2000_and_16_bit_and_gray_work():
    from skimage.color import deltaE_ciede2000, rgb2lab

    src = np.asarray(photo("astronaut", (64, 64))) / 255.0
    shifted = np.clip(src * 0.9 + 0.05, 0, 1)
    want = deltaE_ciede2000(rgb2lab(src), rgb2lab(shifted))
    np.testing.assert_allclose(delta_e_map(src, shifted), want, atol=1e-2)
    out16 = (np.repeat(np.repeat(shifted, 2, 0), 2, 1) * 65535 + 0.5).astype(np.uint16)
    report = measure_fidelity(src, array_strips(out16, 9), 128, 128)
    assert abs(report.delta_e_mean - want.mean()) < 0.02 and report.seam_score is None
    gray = np.asarray(photo("camera", (64, 64)))  # 2-D: gray, as the file holds it
    gray_out = np.repeat(np.repeat(gray, 3, 0), 3, 1)
    assert measure_fidelity(np.repeat(gray[..., None] / 255.0, 3, 2),
                            array_strips(gray_out), 192, 192).delta_e_mean < 1e-3


def test_a_seam_raises_the_score_and_a_smooth_image_scores_one():
    y, x = np.mgrid[0:256, 0:256] / 255.0
    rng = np.random.default_rng(1)
    smooth = np.stack([x, y, (x + y) / 2], -1) + rng.normal(0, 0.01, (256, 256, 3))
    grid = usdu_grid(256, 256, 64)
    src = dense_area_average(smooth, 64, 64)
    clean = measure_fidelity(src, array_strips(smooth.astype(np.float32)), 256, 256, grid)
    assert abs(clean.seam_score - 1.0) < 0.1
    seamed = smooth.copy()
    seamed[:, 128:] += 0.06  # a tint step at one of the six borders
    report = measure_fidelity(src, array_strips(seamed.astype(np.float32)), 256, 256, grid)
    assert report.seam_score > 1.4
    # The heat map shows where: the right half drifted.
    right = [t.delta_e_mean for t in report.tiles if t.box[0] >= 128]
    left = [t.delta_e_mean for t in report.tiles if t.box[2] <= 128]
    assert min(right) > 2 * max(left)


def test_grids_esrgan_cores_and_the_heat_map_cap():
    grid = esrgan_grid(1200, 1000, (150, 125), 4, 2, 256, 32)  # last pass input 600 x 500
    cores = [s.core_start for s in axis_spans(500, 256, 32)]
    assert grid.row_edges == tuple(round(c * 1200 / 500) for c in cores) + (1200,)
    assert single_tile(5, 7).tiles == 1
    fine = TileGrid(tuple(range(0, 1001, 10)), tuple(range(0, 1001, 10)))  # 10,000 cells
    coarse = fine.coarsened(4096)
    assert coarse.tiles <= 4096 and coarse.row_edges[-1] == 1000
    src = np.zeros((100, 100, 3), np.float32)
    report = measure_fidelity(src, array_strips(np.zeros((1000, 1000, 3), np.uint8)),
                              1000, 1000, fine, max_tiles=100)
    assert len(report.tiles) <= 100 and report.tiles[-1].box[2:] == (1000, 1000)


def test_quality_travels_in_completed_and_the_record():
    src = np.asarray(photo("chelsea", (48, 32))) / 255.0
    out = np.repeat(np.repeat(src, 2, 0), 2, 1).astype(np.float32)
    quality = Quality.from_report(measure_fidelity(src, array_strips(out), 64, 96,
                                                   usdu_grid(64, 96, 32)), tiles_rerun=1)
    event = pickle.loads(pickle.dumps(Completed("k", "f.png", None, quality)))
    assert event.quality == quality and quality.tiles_rerun == 1
    record = {"engine": "esrgan", "params": {"model": "m"}, "input_size": {"width": 1,
              "height": 1}, "output_size": {"width": 1, "height": 1},
              "plan": {"output_width": 1, "output_height": 1, "scale_factor": 1,
                       "crop_info": None, "final_width": 1, "final_height": 1,
                       "crop_applied": False, "dpi": 150}}
    assert JobRecord.model_validate(record).quality is None  # older records
    job = JobRecord.model_validate(record)
    job.mark_completed(event)
    again = JobRecord.model_validate_json(job.model_dump_json())
    assert again.quality == quality and again.quality.tiles[0].box == (0, 0, 32, 32)


# --- the report streamed: nothing at the input's size ---------------------------------------

def whole_map_report(src: np.ndarray, out: np.ndarray, grid: TileGrid):
    """The reference: the whole ΔE map at once, numpy's percentile, each cell's mean of the
    input pixels whose centres fall in it (the image's mean where none does)."""
    from upscaler.compute.fidelity import as_unit_rgb

    (in_h, in_w), (out_h, out_w) = src.shape[:2], out.shape[:2]
    averager = AreaAverager(out_h, out_w, in_h, in_w)
    averager.add(0, out)
    de = delta_e_map(as_unit_rgb(src), averager.result).astype(np.float64)
    cy, cx = (np.arange(in_h) + 0.5) * out_h / in_h, (np.arange(in_w) + 0.5) * out_w / in_w
    cells = []
    for r0, r1 in zip(grid.row_edges, grid.row_edges[1:], strict=False):
        for c0, c1 in zip(grid.col_edges, grid.col_edges[1:], strict=False):
            inside = de[((cy >= r0) & (cy < r1))][:, (cx >= c0) & (cx < c1)]
            cells.append(inside.mean() if inside.size else de.mean())
    return de.mean(), np.percentile(de, 95), cells


class RowsOf:
    """An image as a ``Plane`` (as an upload's canvas on disk reads)."""

    def __init__(self, array: np.ndarray):
        self.array, (self.height, self.width) = array, array.shape[:2]
        self.channels = 3

    def read_rows(self, top: int, count: int) -> np.ndarray:
        return self.array[top:top + count].copy()


@pytest.mark.parametrize("case", ["x4-uint8", "x2.5-float", "gray-uint16", "fine-grid"])
def test_the_streamed_report_equals_the_whole_map_one(case):
    rng = np.random.default_rng(1)
    src = np.asarray(photo("coffee", (60, 40)))
    out_h, out_w, grid = 160, 240, None
    if case == "x2.5-float":
        out_h, out_w = 100, 150
    big = np.asarray(photo("coffee", (out_w, out_h)), np.float32) / 255.0
    out = np.clip(big + rng.normal(0, 0.03, big.shape), 0, 1).astype(np.float32)
    if case == "x4-uint8":
        out = (out * 255 + 0.5).astype(np.uint8)
    if case == "gray-uint16":
        src = src.mean(axis=2, keepdims=True).astype(np.uint8)[..., 0]
        src = np.repeat(src[..., None], 3, axis=2)
        out = (out.mean(axis=2, keepdims=True).repeat(3, axis=2) * 65535 + 0.5).astype(
            np.uint16)
    grid = usdu_grid(out_h, out_w, 2) if case == "fine-grid" else usdu_grid(out_h, out_w, 64)
    heat = grid.coarsened()
    mean, p95, cells = whole_map_report(src, out, heat)
    for source in (src, RowsOf(src)):
        report = measure_fidelity(source, array_strips(out, 9), out_h, out_w, grid)
        assert abs(report.delta_e_mean - mean) < 1e-4
        assert abs(report.delta_e_p95 - p95) < 2e-4  # the histogram's half bin, and rounding
        assert [t.delta_e_mean for t in report.tiles] == pytest.approx(cells, abs=1e-3)
        assert report.grid == (len(heat.row_edges) - 1, len(heat.col_edges) - 1)


def test_the_report_holds_a_band_of_the_input_not_all_of_it():
    import tracemalloc

    side = 1200
    src = np.asarray(photo("astronaut", (side, side)))
    out = np.repeat(np.repeat(src, 2, axis=0), 2, axis=1)  # exact x2: no drift
    tracemalloc.start()
    try:
        report = measure_fidelity(RowsOf(src), array_strips(out, 64), 2 * side, 2 * side)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.delta_e_mean < 1e-3
    # The whole-map report held the averaged input, its float copy and the ΔE map (over
    # 40 bytes an input pixel: 58 MB); left: the p95 histogram (16 MB) and a band's work.
    assert peak < 25e6, peak
