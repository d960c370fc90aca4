"""Metadata kept (issue 23): EXIF, XMP and IPTC from JPEG/PNG/TIFF inputs into PNG, TIFF and
JPEG outputs through the engine, read back with Pillow and tifffile: upright, no thumbnail,
the output's size and DPI, GPS only when asked, nothing of them with metadata=strip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from helpers.api import upload, wait_for_job
from helpers.images import photo
from helpers.print_files import IPTC, XMP, camera_exif, wide_gamut_icc, with_metadata
from PIL import ExifTags, Image, IptcImagePlugin

from upscaler.compute.encode import encode_image
from upscaler.compute.encode_options import EncodeOptions
from upscaler.compute.images import DecodedImage, decode_image
from upscaler.compute.metadata import (
    MAX_BLOCK_BYTES,
    ImageMetadata,
    output_exif,
    output_xmp,
    raw_profile_bytes,
)

MAX = 10**8
GPS = ExifTags.IFD.GPSInfo


def _iptc_of(out: Image.Image, data: bytes) -> bytes | None:
    if out.format == "PNG":
        text = out.info.get("Raw profile type iptc")
        return raw_profile_bytes(text) if text else None
    if out.format == "TIFF":
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            tag = tif.pages[0].tags.get(33723)
            return None if tag is None else bytes(tag.value)
    info = IptcImagePlugin.getiptcinfo(out)
    return None if not info else b"".join(
        b"\x1c" + bytes(k) + len(v).to_bytes(2, "big") + v for k, v in info.items())


def _xmp_of(out: Image.Image) -> bytes | None:
    xmp = out.info.get("xmp") or out.info.get("XML:com.adobe.xmp")
    return xmp.encode() if isinstance(xmp, str) else xmp


def _job(app, data: bytes, **fields) -> tuple[Image.Image, bytes]:
    r = upload(app, data, model="tiny-rrdb", upscale_factor=2, target_dpi=300, **fields)
    assert r.status_code == 200, r.text
    content = app.get(r.json()["outputUrl"]).content
    out = Image.open(io.BytesIO(content))
    out.load()
    return out, content


@pytest.mark.parametrize("source", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg"])
def test_metadata_kept_and_rewritten_through_the_engine(app, source, fmt):
    """A 40x30 photo stored rotated (EXIF Orientation 6) comes out 60x80, upright."""
    icc = wide_gamut_icc()
    out, data = _job(app, with_metadata(photo("coffee", (40, 30)), source, icc=icc),
                     output_format=fmt)
    assert out.size == (60, 80)
    exif = out.getexif()
    assert exif.get(0x0112, 1) == 1 and exif[0x010F] == "Canon"  # upright; the camera kept
    assert exif[0x8298] == "(c) Jane Roe 2026"
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    assert (sub[0xA002], sub[0xA003]) == (60, 80) and sub[0x9003] == "2026:01:02 03:04:05"
    assert float(exif[0x011A]) == 300 and exif[0x0128] == 2
    assert not exif.get_ifd(GPS) and not exif.get_ifd(ExifTags.IFD.IFD1)
    xmp = _xmp_of(out)
    assert b'tiff:Orientation="1"' in xmp and b'exif:PixelXDimension="60"' in xmp
    assert b"(c) Jane Roe 2026" in xmp and b"GPSLatitude" not in xmp
    assert _iptc_of(out, data) == IPTC
    assert out.info["icc_profile"] == icc
    assert round(out.info["dpi"][0]) == 300


def test_keep_gps_keeps_the_gps_ifd(app):
    out, _ = _job(app, with_metadata(photo("coffee", (40, 30)), "JPEG"), output_format="jpeg",
                  keep_gps="true")
    gps = out.getexif().get_ifd(GPS)
    assert gps[1] == "N" and tuple(map(float, gps[2])) == (48.0, 51.0, 24.0)
    assert b"GPSLatitude" in _xmp_of(out)


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg"])
def test_strip_writes_no_metadata_but_dpi_and_icc(app, fmt):
    icc = wide_gamut_icc()
    out, data = _job(app, with_metadata(photo("coffee", (40, 30)), "JPEG", icc=icc),
                     output_format=fmt, metadata="strip")
    exif = out.getexif()
    assert 0x010F not in exif and not exif.get_ifd(ExifTags.IFD.Exif)
    assert not _xmp_of(out) and _iptc_of(out, data) is None
    assert out.info["icc_profile"] == icc and round(out.info["dpi"][0]) == 300


def test_16bit_tiff_carries_metadata_read_back_with_tifffile():
    rgb = np.asarray(photo("coffee", (48, 32)), np.float32) / 255.0
    source = with_metadata(Image.fromarray((rgb * 255).astype(np.uint8)), "JPEG", orientation=1)
    meta = decode_image(source, MAX).metadata
    image = DecodedImage(rgb, None, "rgb", 16, None, "PNG", meta)
    data = encode_image(image, "tiff", 240, tiff_compression="lzw")
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        assert page.bitspersample == 16 and page.compression == 5
        assert page.tags["ExifTag"].value["PixelXDimension"] == 48
        assert "GPSTag" not in page.tags and page.tags["Make"].value == "Canon"
        assert bytes(page.tags[33723].value) == IPTC and b"(c) Jane" in page.tags[700].value
        assert page.asarray().shape == (32, 48, 3)


def test_16bit_png_and_gray_carry_metadata():
    meta = ImageMetadata(None, XMP, IPTC)
    rgb = np.asarray(photo("coffee", (48, 32)), np.float32) / 255.0
    for image in (DecodedImage(rgb, None, "rgb", 16, None, "PNG", meta),
                  DecodedImage(np.repeat(rgb[..., :1], 3, 2), None, "gray", 8, None, "PNG",
                               meta)):
        out = Image.open(io.BytesIO(encode_image(image, "png", 300)))
        assert b"(c) Jane" in _xmp_of(out) and raw_profile_bytes(
            out.info["Raw profile type iptc"]) == IPTC


def test_metadata_survives_flux_prepass_npz(tmp_path):
    from upscaler.compute.engines.usdu_disk import image_to_disk, read_npz, write_npz

    def stored_and_read(image: DecodedImage):
        write_npz(image_to_disk(image, tmp_path), tmp_path / "prepass.npz")
        with open(tmp_path / "prepass.npz", "rb") as f:
            return read_npz(f, tmp_path)

    image = decode_image(with_metadata(photo("coffee", (40, 30)), "PNG"), MAX)
    back = stored_and_read(image)
    assert back.metadata == image.metadata and back.metadata.iptc == IPTC
    bare = DecodedImage(image.rgb, None, "rgb", 8, None, "PNG")
    assert stored_and_read(bare).metadata is None


def test_oversized_block_is_dropped():
    """(A PNG text chunk over 1 MB Pillow refuses itself; a TIFF tag it reads.)"""
    buf = io.BytesIO()
    photo("coffee", (16, 16)).save(buf, "TIFF", tiffinfo={700: b"x" * (MAX_BLOCK_BYTES + 1),
                                                          33723: IPTC})
    meta = decode_image(buf.getvalue(), MAX).metadata
    assert meta.xmp is None and meta.iptc == IPTC


def test_encode_options_default_keeps_metadata():
    assert EncodeOptions().metadata == "keep" and EncodeOptions().keep_gps is False


def test_webp_input_metadata_is_read():
    buf = io.BytesIO()
    photo("coffee", (40, 30)).save(buf, "WEBP", exif=camera_exif(6), xmp=XMP)
    image = decode_image(buf.getvalue(), MAX)
    assert image.rgb.shape[:2] == (40, 30)  # upright
    out = Image.open(io.BytesIO(encode_image(image, "jpeg", 300)))
    assert out.getexif()[0x0112] == 1 and b"(c) Jane Roe" in _xmp_of(out)


def test_xmp_element_form_and_srgb_colour_space():
    xmp = (b'<rdf:Description><tiff:Orientation>8</tiff:Orientation>'
           b'<exif:PixelXDimension>10</exif:PixelXDimension><exif:ColorSpace>65535'
           b'</exif:ColorSpace><exif:GPSLatitude>1,2N</exif:GPSLatitude>'
           b'<photoshop:ICCProfile>Adobe RGB (1998)</photoshop:ICCProfile></rdf:Description>')
    out = output_xmp(xmp, 640, 480, 300, keep_gps=False, srgb=True)
    assert b"<tiff:Orientation>1</tiff:Orientation>" in out
    assert b"<exif:PixelXDimension>640</exif:PixelXDimension>" in out
    assert b"<exif:ColorSpace>1</exif:ColorSpace>" in out
    assert b"GPS" not in out and b"ICCProfile" not in out
    exif = Image.Exif()
    exif.load(b"Exif\x00\x00" + output_exif(camera_exif()[6:], 640, 480, 300, False, True))
    assert exif.get_ifd(ExifTags.IFD.Exif)[0xA001] == 1


def test_flux_job_keeps_metadata_as_jpeg(app):
    """Through FLUX's stored pre-pass and its tiles: the same EXIF/XMP/IPTC rules."""
    fields = {"upscale_factor": "2", "tile_size": "64", "tile_padding": "16", "mask_blur": "4",
              "steps": "2", "denoise": "0.5", "upscale_model": "tiny-rrdb"}
    r = upload(app, with_metadata(photo("coffee", (64, 48)), "JPEG"), engine="flux",
               output_format="jpeg", target_dpi=300, **fields)
    assert r.status_code == 202, r.text
    status = wait_for_job(app, r.json()["jobId"], timeout=120)
    assert status["status"] == "completed", status
    data = app.get(status["output_url"]).content
    out = Image.open(io.BytesIO(data))
    exif = out.getexif()
    assert out.size == (96, 128) and exif[0x0112] == 1 and exif[0x010F] == "Canon"
    assert exif.get_ifd(ExifTags.IFD.Exif)[0xA002] == 96 and not exif.get_ifd(GPS)
    assert _iptc_of(out, data) == IPTC and b'tiff:Orientation="1"' in _xmp_of(out)
