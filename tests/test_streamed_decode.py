"""Big 8-bit uploads decoded by strips into an on-disk canvas (upscaler/compute/streamed_decode.py):
the same pixels, profile and metadata as the in-memory decoders, the same ESRGAN output, corrupt
files refused, and only a strip held at a time. The size threshold is lowered here so small
photos take the streamed path."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import tifffile
from helpers.images import photo
from helpers.model_factory import NANO, nano_engine
from helpers.print_files import wide_gamut_icc, with_metadata
from PIL import Image

from upscaler.compute import images
from upscaler.compute.canvas import OutputImage
from upscaler.compute.canvas_file import Canvas, scratch_folder
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.compute.engines.esrgan import EsrganEngine
from upscaler.compute.images import decode_image, probe_image
from upscaler.compute.memory import (
    STREAMED_DECODE_BASE_BYTES,
    STREAMED_DECODE_STRIPS,
    decode_bytes,
)
from upscaler.compute.streamed_decode import check_decodes, decode_to_canvas
from upscaler.errors import InvalidImage, UnsupportedMediaType

MAX = 10**8


@pytest.fixture
def streamed(monkeypatch):
    monkeypatch.setattr(images, "STREAMED_MIN_PIXELS", 1000)


def _encoded(fmt: str, mode: str = "RGB", size=(150, 110), **save) -> bytes:
    im = photo("astronaut", size).convert(mode)
    if mode == "RGBA":  # an alpha that varies, so a mixed-up band shows
        im.putalpha(Image.linear_gradient("L").resize(im.size))
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


CASES = {
    "png": lambda: _encoded("PNG"),
    "png-rgba": lambda: _encoded("PNG", "RGBA"),
    "tiff-lzw": lambda: _encoded("TIFF", compression="tiff_lzw"),
    "tiff-rgba": lambda: _encoded("TIFF", "RGBA", compression="tiff_adobe_deflate"),
    "jpeg": lambda: _encoded("JPEG", quality=90),
    "jpeg-metadata": lambda: with_metadata(photo("coffee", (120, 90)), "JPEG", orientation=1,
                                           icc=wide_gamut_icc()),
    "png-metadata": lambda: with_metadata(photo("coffee", (120, 90)), "PNG", orientation=1,
                                          icc=wide_gamut_icc()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_by_strips_gives_what_the_in_memory_decoders_give(streamed, tmp_path, case,
                                                          monkeypatch):
    monkeypatch.setattr(images, "STREAMED_STRIP_BYTES", 5000)  # many strips, a short last one
    data = CASES[case]()
    expected = decode_image(data, MAX, integers=True)
    path = tmp_path / "upload"
    path.write_bytes(data)
    for source in (data, path):
        got = decode_to_canvas(source, tmp_path / "scratch", MAX)
        assert got is not None and isinstance(got.rgb, Canvas)
        assert (got.width, got.height) == (expected.width, expected.height)
        assert np.array_equal(got.rgb.read_rows(0, got.height), expected.rgb)
        assert (got.alpha is None) == (expected.alpha is None)
        if expected.alpha is not None:
            assert np.array_equal(got.alpha, expected.alpha)
        assert (got.color, got.bit_depth, got.source_format) == (
            expected.color, expected.bit_depth, expected.source_format)
        assert got.icc_profile == expected.icc_profile
        assert got.metadata == expected.metadata
        got.rgb.close()
    assert probe_image(data, MAX).streamed


def _rotated_jpeg() -> bytes:
    return with_metadata(photo("coffee", (120, 90)), "JPEG", orientation=6)


def _interlaced_png() -> bytes:
    import pyvips  # Pillow writes no interlaced PNG

    arr = np.asarray(photo("astronaut", (150, 110)))
    data = pyvips.Image.new_from_array(arr, interpretation="srgb").pngsave_buffer(
        interlace=True)
    assert Image.open(io.BytesIO(data)).info.get("interlace")
    return data


def _sixteen_bit_png() -> bytes:
    buf = io.BytesIO()
    arr = np.asarray(photo("astronaut", (60, 40)), np.uint16) * 257
    tifffile.imwrite(buf, arr, photometric="rgb")
    return buf.getvalue()


@pytest.mark.parametrize("make", [
    lambda: _encoded("PNG", "P"),  # a palette
    lambda: _encoded("PNG", "L"),  # gray
    lambda: _encoded("PNG", "RGB", transparency=(0, 0, 0)),  # a colour key
    lambda: _encoded("WEBP", lossless=True),  # not a streamed format
    _rotated_jpeg,  # turned as it is decoded: needs every row
    _sixteen_bit_png,  # 16 bits
    lambda: _encoded("JPEG", progressive=True),  # its codec decodes all of it at once
    lambda: _interlaced_png(),  # the same (Adam7)
], ids=["palette", "gray", "colour-key", "webp", "rotated", "16-bit", "progressive",
        "interlaced"])
def test_other_kinds_decode_in_memory(streamed, tmp_path, make):
    data = make()
    assert decode_to_canvas(data, tmp_path, MAX) is None
    assert not probe_image(data, MAX).streamed
    check_decodes(data, MAX)  # the in-memory check
    assert list(tmp_path.iterdir()) == []


def test_a_tiff_stored_in_big_strips_decodes_in_memory(streamed, tmp_path, monkeypatch):
    data = _encoded("TIFF", compression="tiff_lzw")  # one strip of 110 rows
    assert probe_image(data, MAX).streamed
    monkeypatch.setattr(images, "STREAMED_MAX_BLOCK_BYTES", 100 * 150 * 3)
    assert decode_to_canvas(data, tmp_path, MAX) is None and not probe_image(data, MAX).streamed


def test_small_uploads_decode_in_memory(tmp_path):
    data = _encoded("PNG")
    assert decode_to_canvas(data, tmp_path, MAX) is None
    probe = probe_image(data, MAX)
    assert not probe.streamed and decode_bytes(probe) > 150 * 110


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_a_truncated_upload_is_refused_and_leaves_nothing(streamed, tmp_path, fmt):
    data = _encoded(fmt, size=(300, 220), **({"compression": "tiff_lzw"} if fmt == "TIFF"
                                            else {}))
    cut = data[:len(data) * 2 // 3]
    # (A TIFF keeps its directory at the end: cut, it is not recognised at all.)
    refused = UnsupportedMediaType if fmt == "TIFF" else InvalidImage
    with pytest.raises(refused):
        check_decodes(cut, MAX)
    with pytest.raises(refused):
        decode_to_canvas(cut, tmp_path, MAX)
    assert list(tmp_path.iterdir()) == []


def test_a_streamed_check_costs_a_strip_not_the_image(streamed, monkeypatch):
    side = 1200
    data = _encoded("PNG", size=(side, side), compress_level=1)
    monkeypatch.setattr(images, "STREAMED_STRIP_BYTES", side * 3 * 32)
    probe = probe_image(data, MAX)
    assert probe.streamed and probe.strip_bytes == side * 3 * 32
    assert decode_bytes(probe) == STREAMED_DECODE_BASE_BYTES + STREAMED_DECODE_STRIPS * side * 96
    tracemalloc.start()
    try:
        check_decodes(data, MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < side * side * 3 / 8, peak  # the image's bytes would be 4.3 MB


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> EsrganEngine:
    return nano_engine(tmp_path_factory.mktemp("nano-models"), cpu_tile_size=64)


@pytest.mark.parametrize("factor", [4, 3, 1])  # one exact pass, resampled by bands, no pass
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_esrgan_from_a_canvas_gives_the_in_memory_output(streamed, engine, tmp_path, factor,
                                                         mode):
    data = _encoded("PNG", mode)
    memory = decode_image(data, MAX, integers=True)
    plan = calculate_output_dimensions(memory.width, memory.height, factor)
    with scratch_folder(tmp_path) as folder:
        want = _pixels(engine.upscale(memory, NANO, plan, canvas_dir=folder).image)
        on_disk = decode_to_canvas(data, folder, MAX)
        assert on_disk is not None
        got = _pixels(engine.upscale(on_disk, NANO, plan, canvas_dir=folder).image)
    assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)


def _pixels(out) -> np.ndarray:
    if isinstance(out, OutputImage):
        rows = np.concatenate([r for _, r in out.strips(40, with_alpha=True)])
        out.close()
        return rows
    return out.rgb if out.alpha is None else np.dstack([out.rgb, out.alpha])
