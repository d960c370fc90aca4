"""EXIF, XMP and IPTC: read from an upload at decode, rewritten for the output (its pixel size,
DPI and upright orientation), and written by ``upscaler.compute.encode``'s writers.

Blocks are kept as bytes (EXIF as a TIFF-structured block without the ``Exif\\0\\0`` prefix,
XMP as the packet's UTF-8, IPTC as IIM records): small, picklable, and capped at
``MAX_BLOCK_BYTES`` each so an upload cannot make a decode hold more than a few MB for them.
"""

from __future__ import annotations

import contextlib
import re
import struct
from dataclasses import dataclass

from PIL import Image

# A block over this is dropped (real EXIF is at most 64 KB in a JPEG; XMP rarely past 100 KB).
MAX_BLOCK_BYTES = 1 << 20

EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
ORIENTATION, X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT = 0x0112, 0x011A, 0x011B, 0x0128
PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION, COLOR_SPACE = 0xA002, 0xA003, 0xA001
# IFD0 tags that describe a file's structure (a TIFF's strips, a thumbnail's offsets): never
# carried, the output's writer states its own.
_STRUCTURAL_TAGS = frozenset({
    0x00FE, 0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0111, 0x0115, 0x0116, 0x0117, 0x011C,
    0x0140, 0x0142, 0x0143, 0x0144, 0x0145, 0x0152, 0x0153, 0x0201, 0x0202, 0x014A, 0x02BC,
    0x83BB, 0x8773, 0x935C})
# What a TIFF's IFD0 carries that belongs to EXIF's IFD0 (descriptive tags only).
TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x013C, 0x8298)
EXIF_PREFIX = b"Exif\x00\x00"
PNG_XMP_KEY = "XML:com.adobe.xmp"
PNG_IPTC_KEY = "Raw profile type iptc"
PHOTOSHOP_IPTC = 0x0404  # the IPTC-NAA resource in a JPEG's APP13 Photoshop block


METADATA_BLOCKS = ("exif", "xmp", "iptc")  # ImageMetadata's fields


@dataclass(frozen=True)
class ImageMetadata:
    exif: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.exif or self.xmp or self.iptc)


def _capped(block: bytes | str | None) -> bytes | None:
    if isinstance(block, str):
        block = block.encode("utf-8")
    if not block or len(block) > MAX_BLOCK_BYTES:
        return None
    return bytes(block)


# --- reading ---------------------------------------------------------------------------------

def read_metadata(im: Image.Image) -> ImageMetadata | None:
    """The EXIF, XMP and IPTC of an image Pillow has opened (its header; for a PNG, the chunks
    before its pixels). A broken block is dropped, never a reason to refuse the image."""
    fmt, info = im.format, im.info
    exif = xmp = iptc = None
    with contextlib.suppress(Exception):
        if fmt == "TIFF":
            exif = _tiff_exif(im)
            xmp = _capped(im.tag_v2.get(700))
            iptc = _capped(_tiff_iptc(im))
        else:
            raw = info.get("exif")
            if isinstance(raw, bytes):
                exif = _capped(raw.removeprefix(EXIF_PREFIX))
            xmp = _capped(info.get("xmp") or info.get(PNG_XMP_KEY))
            if fmt in ("JPEG", "MPO"):
                block = info.get("photoshop", {}).get(PHOTOSHOP_IPTC)
                iptc = _capped(block if isinstance(block, bytes) else None)
            elif fmt == "PNG" and isinstance(text := info.get(PNG_IPTC_KEY), str):
                iptc = _capped(raw_profile_bytes(text))
    meta = ImageMetadata(exif, xmp, iptc)
    return meta if meta else None


def _tiff_exif(im: Image.Image) -> bytes | None:
    """A TIFF's descriptive IFD0 tags and its EXIF/GPS IFDs as one EXIF block."""
    source = im.getexif()
    exif = Image.Exif()
    for tag in TIFF_DESCRIPTIVE_TAGS:
        if tag in source:
            exif[tag] = source[tag]
    found = len(exif) > 0
    for ifd in (EXIF_IFD, GPS_IFD):
        if tag_values := source.get_ifd(ifd):
            exif.get_ifd(ifd).update(tag_values)
            found = True
    return _capped(exif.tobytes().removeprefix(EXIF_PREFIX)) if found else None


def _tiff_iptc(im: Image.Image) -> bytes | None:
    value = im.tag_v2.get(33723)
    if isinstance(value, bytes):
        return value
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        # Written as LONGs by some tools: the bytes are the values in the file's byte order.
        return struct.pack(f"{im.tag_v2._endian}{len(value)}I", *value)
    return None


def raw_profile_bytes(text: str) -> bytes | None:
    """ImageMagick's "Raw profile type" PNG text: a name, a length, then hex."""
    lines = text.strip().split("\n")
    if len(lines) < 3:
        return None
    length = int(lines[1])
    data = bytes.fromhex("".join(lines[2:]))
    return data[:length] if len(data) >= length else None


def raw_profile_text(name: str, data: bytes) -> str:
    hexed = data.hex()
    rows = "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72))
    return f"\n{name}\n{len(data):8d}\n{rows}\n"


# --- rewriting for the output ----------------------------------------------------------------

def output_metadata(meta: ImageMetadata | None, width: int, height: int, dpi: int,
                    keep_gps: bool, srgb: bool = False) -> ImageMetadata | None:
    """What the output carries: EXIF upright (Orientation 1), without its thumbnail (IFD1) or
    interoperability IFD, with the output's pixel size and DPI, without GPS unless
    ``keep_gps``, and ColorSpace sRGB when the pixels were converted to it (``srgb``); XMP
    with the same fields rewritten; IPTC as it was."""
    if not meta:
        return None
    exif = None
    if meta.exif:
        with contextlib.suppress(Exception):  # an unreadable EXIF block is dropped
            exif = output_exif(meta.exif, width, height, dpi, keep_gps, srgb)
    xmp = output_xmp(meta.xmp, width, height, dpi, keep_gps, srgb) if meta.xmp else None
    result = ImageMetadata(exif, xmp, meta.iptc)
    return result if result else None


def output_exif(raw: bytes, width: int, height: int, dpi: int, keep_gps: bool,
                srgb: bool = False) -> bytes:
    """A fresh EXIF block from ``raw``'s IFD0 (less its structural tags), EXIF IFD and GPS IFD;
    everything else (IFD1 and its thumbnail) is left behind."""
    source = Image.Exif()
    source.load(EXIF_PREFIX + raw)
    exif = Image.Exif()
    for tag, value in source.items():
        if tag not in _STRUCTURAL_TAGS and tag not in (EXIF_IFD, GPS_IFD):
            exif[tag] = value
    exif[ORIENTATION] = 1
    exif[X_RESOLUTION] = exif[Y_RESOLUTION] = float(dpi)
    exif[RESOLUTION_UNIT] = 2  # inches
    sub = {k: v for k, v in source.get_ifd(EXIF_IFD).items() if k != INTEROP_IFD}
    sub.update({PIXEL_X_DIMENSION: width, PIXEL_Y_DIMENSION: height})
    if srgb:
        sub[COLOR_SPACE] = 1  # sRGB (an Adobe RGB photo says 65535, "uncalibrated")
    exif.get_ifd(EXIF_IFD).update(sub)
    if keep_gps and (gps := source.get_ifd(GPS_IFD)):
        exif.get_ifd(GPS_IFD).update(gps)
    return exif.tobytes().removeprefix(EXIF_PREFIX)


def output_xmp(xmp: bytes, width: int, height: int, dpi: int, keep_gps: bool,
               srgb: bool = False) -> bytes | None:
    """The XMP packet with its orientation, pixel size and resolution rewritten to the output's
    (attribute or element form), its exif:GPS* properties removed unless ``keep_gps``, and,
    for ``srgb``, exif:ColorSpace 1 and no photoshop:ICCProfile (the old profile's name)."""
    try:
        text = xmp.decode("utf-8")
    except UnicodeDecodeError:
        return None  # not an XMP packet (which is UTF-8): not carried
    values = {"tiff:Orientation": "1", "exif:PixelXDimension": str(width),
              "exif:PixelYDimension": str(height), "tiff:ImageWidth": str(width),
              "tiff:ImageLength": str(height), "tiff:XResolution": f"{dpi}/1",
              "tiff:YResolution": f"{dpi}/1", "tiff:ResolutionUnit": "2"}
    if srgb:
        values["exif:ColorSpace"] = "1"
        text = _without(text, "photoshop:ICCProfile")
    for name, value in values.items():
        key = re.escape(name)
        text = re.sub(rf"(\b{key}\s*=\s*)([\"'])[^\"']*\2", rf"\g<1>\g<2>{value}\g<2>", text)
        text = re.sub(rf"(<{key}>)[^<]*(</{key}>)", rf"\g<1>{value}\g<2>", text)
    if not keep_gps:
        text = _without(text, r"exif:GPS\w+")
    return text.encode("utf-8")


def _without(text: str, name: str) -> str:
    """``text`` less the XMP properties named by the pattern ``name`` (attribute, empty
    element, or element with content)."""
    text = re.sub(rf"\s+{name}\s*=\s*([\"'])[^\"']*\1", "", text)
    text = re.sub(rf"<({name})\b[^>]*/>", "", text)
    return re.sub(rf"<({name})\b[^>]*>.*?</\1>", "", text, flags=re.DOTALL)
