"""The on-disk canvas and the streamed writers (upscaler/compute/canvas.py, writers.py): rows
and tile cores written and read back, files removed however a job ends; PNG and TIFF written
strip by strip decode back equal to the canvas (8 and 16 bits, alpha, gray, CMYK), with the
DPI and the ICC profile; BigTIFF chosen when a file may pass 4 GB; results uploaded from a
file."""

from __future__ import annotations

import io
import os

import imagecodecs
import numpy as np
import pytest
import tifffile
from helpers.image_files import SRGB_ICC
from PIL import Image, ImageCms

from upscaler.compute import writers
from upscaler.compute.canvas import ArrayPlane, OutputImage
from upscaler.compute.canvas_file import Canvas, scratch_folder
from upscaler.compute.writers import needs_bigtiff, write_output, write_png_file, write_tiff_file
from upscaler.domain.storage import Storage

RNG = np.random.default_rng(7)


def random_pixels(height: int, width: int, channels: int, bits: int) -> np.ndarray:
    dtype = np.uint16 if bits == 16 else np.uint8
    return RNG.integers(0, np.iinfo(dtype).max, (height, width, channels), dtype=dtype,
                        endpoint=True)


def canvas_of(folder, pixels: np.ndarray) -> Canvas:
    canvas = Canvas(folder, *pixels.shape, pixels.dtype)
    for top in range(0, pixels.shape[0], 37):  # uneven bands
        canvas.write_rows(top, pixels[top:top + 37])
    return canvas


def test_a_canvas_holds_rows_and_blocks_in_a_file_removed_on_close(tmp_path):
    pixels = random_pixels(70, 90, 3, 8)
    canvas = canvas_of(tmp_path, pixels)
    assert canvas.path.stat().st_size == 70 * 90 * 3 == canvas.nbytes
    assert np.array_equal(canvas.read_rows(0, 70), pixels)
    assert np.array_equal(canvas.read_rows(65, 100), pixels[65:])  # clipped at the end
    block = random_pixels(20, 30, 3, 8)
    canvas.write_block(10, 50, block)
    pixels[10:30, 50:80] = block
    assert np.array_equal(canvas.read_rows(0, 70), pixels)
    canvas.close()
    assert not canvas.path.exists()


def test_a_scratch_folder_goes_however_the_job_ends(tmp_path):
    with pytest.raises(RuntimeError), scratch_folder(tmp_path / "scratch") as folder:
        Canvas(folder, 10, 10, 3)
        raise RuntimeError("cancelled")
    assert list((tmp_path / "scratch").iterdir()) == []


def test_strips_and_crops_read_the_part_asked(tmp_path):
    pixels, alpha = random_pixels(50, 40, 3, 8), random_pixels(50, 40, 1, 8)
    image = OutputImage(canvas_of(tmp_path, pixels), ArrayPlane(alpha[..., 0], 8), "rgb", 8,
                        None, "PNG")
    tops = [top for top, _ in image.strips(16)]
    assert tops == [0, 16, 32, 48]
    joined = np.concatenate([rows for _, rows in image.strips(16, with_alpha=True)])
    assert np.array_equal(joined, np.concatenate([pixels, alpha], axis=2))
    crop = image.cropped((5, 7, 30, 45)).cropped((1, 2, 20, 30))
    assert (crop.width, crop.height) == (19, 28)
    assert np.array_equal(crop.read_rows(0, 100), pixels[9:37, 6:25])


def decode_png(data: bytes) -> np.ndarray:
    arr = np.asarray(imagecodecs.png_decode(data))
    return arr if arr.ndim == 3 else arr[..., None]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_streamed_png_and_tiff_decode_back_to_the_canvas(tmp_path, bits, with_alpha):
    pixels = random_pixels(300, 517, 3, bits)  # TIFF tiles padded at both edges
    alpha = random_pixels(300, 517, 1, bits)[..., 0] if with_alpha else None
    image = OutputImage(canvas_of(tmp_path, pixels),
                        None if alpha is None else ArrayPlane(alpha, bits), "rgb", bits,
                        SRGB_ICC, "PNG")
    expected = pixels if alpha is None else np.dstack([pixels, alpha])
    write_png_file(image, tmp_path / "out.png", 300, 1)
    assert np.array_equal(decode_png((tmp_path / "out.png").read_bytes()), expected)
    png = Image.open(tmp_path / "out.png")
    assert round(png.info["dpi"][0]) == 300 and png.info["icc_profile"] == SRGB_ICC
    for compression in ("deflate", "lzw", "none"):
        write_tiff_file(image, tmp_path / "out.tiff", 240, compression)
        with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
            page = tif.pages[0]
            assert np.array_equal(page.asarray(), expected)
            assert page.is_tiled and not tif.is_bigtiff
            assert page.tags["XResolution"].value == (240, 1)
            assert page.tags["ResolutionUnit"].value == 2  # inch
            assert bytes(page.tags["InterColorProfile"].value) == SRGB_ICC


def test_gray_and_cmyk_sources_keep_their_kind(tmp_path):
    gray = np.repeat(random_pixels(80, 90, 1, 8), 3, axis=2)
    image = OutputImage(canvas_of(tmp_path, gray), None, "gray", 8, None, "PNG")
    write_png_file(image, tmp_path / "g.png", 300, 1)
    assert np.array_equal(decode_png((tmp_path / "g.png").read_bytes())[..., 0], gray[..., 0])
    write_tiff_file(image, tmp_path / "g.tiff", 300)
    assert np.array_equal(tifffile.imread(tmp_path / "g.tiff"), gray[..., 0])

    rgb = random_pixels(40, 50, 3, 8)
    cmyk = OutputImage(canvas_of(tmp_path, rgb), None, "cmyk", 8, None, "JPEG")
    write_tiff_file(cmyk, tmp_path / "c.tiff", 300)
    with tifffile.TiffFile(tmp_path / "c.tiff") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.SEPARATED
        naive = np.asarray(Image.fromarray(rgb, "RGB").convert("CMYK"))
        assert np.array_equal(tif.pages[0].asarray(), naive)
    write_png_file(cmyk, tmp_path / "c.png", 300, 1)  # PNG has no CMYK: sRGB, said so
    profile = ImageCms.ImageCmsProfile(io.BytesIO(Image.open(tmp_path / "c.png").info[
        "icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


def test_bigtiff_is_chosen_when_the_file_may_pass_4_gb():
    assert not needs_bigtiff(30_000, 30_000, 3, 1)  # 2.7 GB
    assert needs_bigtiff(40_000, 40_000, 3, 1)  # 4.8 GB
    assert needs_bigtiff(30_000, 30_000, 3, 2)  # 16-bit: 5.4 GB
    assert not needs_bigtiff(37_000, 37_000, 3, 1) and needs_bigtiff(37_800, 37_800, 3, 1)


def test_small_and_streamed_outputs_are_the_same_image(tmp_path, monkeypatch):
    """Small outputs go through the whole-image encoders, big ones through the streamed
    writers: the same pixels, DPI and profile either way."""
    pixels = random_pixels(64, 96, 3, 8)
    image = OutputImage(canvas_of(tmp_path, pixels), None, "rgb", 8, SRGB_ICC, "PNG")
    for fmt in ("png", "tiff"):
        whole = tmp_path / f"whole.{fmt}"
        write_output(image, fmt, whole, 300)
        monkeypatch.setattr(writers, "WHOLE_IMAGE_MAX_PIXELS", 100)
        streamed = tmp_path / f"streamed.{fmt}"
        assert write_output(image, fmt, streamed, 300) == streamed.stat().st_size
        monkeypatch.undo()
        for path in (whole, streamed):
            back = Image.open(io.BytesIO(path.read_bytes()))
            assert np.array_equal(np.asarray(back), pixels)
            assert round(back.info["dpi"][0]) == 300 and back.info["icc_profile"] == SRGB_ICC


def test_a_result_is_uploaded_from_its_file(tmp_path):
    storage = Storage(str(tmp_path / "storage"))
    source = tmp_path / "result.png"
    source.write_bytes(b"x" * 3_000_000)
    storage.write_file("results/a.png", source)
    assert storage.read_bytes("results/a.png") == source.read_bytes()
    assert [p.name for p in (tmp_path / "storage" / "results").iterdir()] == ["a.png"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to give a folder to another user")
def test_a_scratch_root_of_another_user_is_refused(tmp_path):
    root = tmp_path / "scratch"
    root.mkdir()
    os.chown(root, 12345, -1)
    with pytest.raises(PermissionError, match="UPSCALER_SCRATCH_DIR"), \
            scratch_folder(root):
        pass
