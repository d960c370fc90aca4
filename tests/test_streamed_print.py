"""The streamed writers (outputs past WHOLE_IMAGE_MAX_PIXELS, strip by strip from a canvas)
write a request's print options as the whole-image encoders do: EXIF/XMP/IPTC, sRGB, TIFF
compression. The threshold is lowered here so small photos take the streamed path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from helpers.images import photo
from helpers.print_files import IPTC, XMP, wide_gamut_icc, with_metadata
from PIL import Image

from upscaler.compute import writers
from upscaler.compute.canvas import OutputImage
from upscaler.compute.encode import encode_image
from upscaler.compute.encode_options import EncodeOptions
from upscaler.compute.images import decode_image
from upscaler.compute.metadata import output_metadata
from upscaler.compute.tiff_metadata import add_tiff_metadata

SIZE = (96, 64)
TAKEN = "2026:01:02 03:04:05"  # the camera EXIF's DateTimeOriginal (helpers/print_files.py)


@pytest.fixture
def streamed(monkeypatch):
    monkeypatch.setattr(writers, "WHOLE_IMAGE_MAX_PIXELS", 0)


def _decoded(bit_depth: int = 8, icc: bytes | None = None):
    im = photo("coffee", SIZE)
    if bit_depth == 16:
        buf = io.BytesIO()
        arr = (np.asarray(im, np.uint16) * 257)
        tifffile.imwrite(buf, arr, photometric="rgb", iccprofile=icc)
        return decode_image(buf.getvalue(), 10**8, integers=True)
    return decode_image(with_metadata(im, "JPEG", orientation=6, icc=icc), 10**8, integers=True)


def _written(tmp_path, image, fmt: str, **options) -> bytes:
    path = tmp_path / f"out.{fmt}"
    writers.write_output(OutputImage.from_decoded(image), fmt, path, 300,
                         tiff_compression=options.pop("tiff_compression", "deflate"),
                         options=EncodeOptions(**options))
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_streamed_files_carry_the_same_metadata(streamed, tmp_path, fmt):
    image = _decoded()
    data = _written(tmp_path, image, fmt)
    whole = encode_image(image, fmt, 300)
    out, ref = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(whole))
    assert out.size == ref.size == (SIZE[1], SIZE[0])  # upright (orientation 6)
    assert out.getexif().get_ifd(0x8769) == ref.getexif().get_ifd(0x8769)
    assert out.getexif()[0x8298] == ref.getexif()[0x8298] and out.getexif().get(0x0112, 1) == 1
    assert round(out.info["dpi"][0]) == 300
    if fmt == "png":
        assert out.info.get("XML:com.adobe.xmp") == ref.info.get("XML:com.adobe.xmp")
        assert "Raw profile type iptc" in out.info
    else:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            tags = tif.pages[0].tags
            assert bytes(tags[33723].value) == IPTC and XMP[:40] in bytes(tags[700].value)
            assert tif.pages[0].is_tiled  # the streamed writer's tiles
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(ref.convert("RGB")))


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_strip_writes_none_when_streamed(streamed, tmp_path, fmt):
    out = Image.open(io.BytesIO(_written(tmp_path, _decoded(), fmt, metadata="strip")))
    assert not dict(out.getexif()).get(0x8769) and "XML:com.adobe.xmp" not in out.info


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_srgb_streamed_is_the_whole_image_conversion(streamed, tmp_path, bit_depth):
    image = _decoded(bit_depth, icc=wide_gamut_icc())
    data = _written(tmp_path, image, "tiff", output_profile="srgb")
    whole = encode_image(image, "tiff", 300, options=EncodeOptions(output_profile="srgb"))
    with tifffile.TiffFile(io.BytesIO(data)) as a, tifffile.TiffFile(io.BytesIO(whole)) as b:
        assert bytes(a.pages[0].tags[34675].value) == bytes(b.pages[0].tags[34675].value)
        assert a.pages[0].dtype == b.pages[0].dtype
        assert np.array_equal(a.pages[0].asarray(), b.pages[0].asarray())
        # the conversion changed the pixels (the profile is not sRGB)
        assert not np.array_equal(a.pages[0].asarray()[..., :3], image.rgb)


@pytest.mark.parametrize(("name", "code"), [("none", 1), ("lzw", 5), ("deflate", 8)])
def test_streamed_tiff_compression(streamed, tmp_path, name, code):
    data = _written(tmp_path, _decoded(), "tiff", tiff_compression=name)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.pages[0].compression == code


def _same_metadata(data: bytes, ref: bytes) -> None:
    """EXIF (IFD0, the EXIF IFD), XMP and IPTC of ``data`` are ``ref``'s, read by Pillow and
    tifffile."""
    out, want = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(ref))
    assert out.getexif().get_ifd(0x8769) == want.getexif().get_ifd(0x8769) != {}
    assert out.getexif()[0x8298] == want.getexif()[0x8298]
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tags = tif.pages[0].tags
        assert bytes(tags[33723].value) == IPTC and XMP[:40] in bytes(tags[700].value)
        # The EXIF IFD, as tifffile reads it.
        assert tags["ExifTag"].value["DateTimeOriginal"] == TAKEN


def test_a_bigtiff_carries_the_same_metadata(streamed, tmp_path, monkeypatch):
    """Past 4 GB the streamed TIFF is a BigTIFF (forced here for a small photo): EXIF, XMP
    and IPTC are written into it as into a classic one."""
    monkeypatch.setattr(writers, "_CLASSIC_TIFF_LIMIT", 0)
    image = _decoded()
    data = _written(tmp_path, image, "tiff")
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.is_bigtiff
        assert np.array_equal(tif.pages[0].asarray(), np.asarray(
            Image.open(io.BytesIO(encode_image(image, "tiff", 300)))))
    _same_metadata(data, encode_image(image, "tiff", 300))


def test_metadata_past_4_gb_of_a_bigtiff_is_addressed_whole(tmp_path):
    """The metadata goes at the end of the file, past 4 GB in a big print: its sub-IFD's
    offset is a LONG8, read whole (a sparse file stands for the print's pixels)."""
    image = _decoded()
    path = tmp_path / "big.tiff"
    tifffile.imwrite(path, image.rgb, bigtiff=True, photometric="rgb")
    with open(path, "r+b") as f:
        f.truncate(5 * 2**30)  # sparse: the pixels a 1.7 GP print would hold
        meta = output_metadata(image.metadata, SIZE[1], SIZE[0], 300, keep_gps=False)
        assert add_tiff_metadata(f, meta) and f.seek(0, 2) > 5 * 2**30
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert tags["ExifTag"].dtype == 16 and tags["ExifTag"].value["DateTimeOriginal"] == TAKEN
        assert bytes(tags[33723].value) == IPTC and XMP[:40] in bytes(tags[700].value)
        assert np.array_equal(tif.pages[0].asarray(), image.rgb)
    with Image.open(path) as out:
        assert out.getexif().get_ifd(0x8769)
