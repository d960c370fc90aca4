"""Inputs as a camera and a photo editor write them: EXIF (rotated, with a thumbnail IFD1 and
GPS), XMP, IPTC and a wide-gamut ICC profile, in JPEG, PNG or TIFF (Pillow's writers)."""

from __future__ import annotations

import io
import struct
import zlib

import imagecodecs
from PIL import Image

COPYRIGHT = "(c) Jane Roe 2026"
CAPTION = b"Coffee on a table"
XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" '
       b'exif:PixelXDimension="40" exif:PixelYDimension="30" exif:GPSLatitude="48,51.4N">'
       b'<dc:rights>(c) Jane Roe 2026</dc:rights></rdf:Description></rdf:RDF></x:xmpmeta>'
       b'<?xpacket end="w"?>')
# IPTC-IIM: 2:120 caption, 2:116 copyright notice.
IPTC = (b"\x1c\x02\x78" + struct.pack(">H", len(CAPTION)) + CAPTION + b"\x1c\x02\x74" +
        struct.pack(">H", len(COPYRIGHT)) + COPYRIGHT.encode())


def wide_gamut_icc() -> bytes:
    """An Adobe-RGB-like matrix profile (D65, Adobe primaries, gamma 2.2), made by littleCMS."""
    return bytes(imagecodecs.cms_profile(
        "rgb", whitepoint=(0.3127, 0.3290, 1.0),
        primaries=(0.64, 0.33, 1.0, 0.21, 0.71, 1.0, 0.15, 0.06, 1.0), gamma=2.19921875))


def camera_exif(orientation: int = 1) -> bytes:
    """EXIF (``Exif\\0\\0`` + TIFF) with IFD0 descriptive tags, an EXIF IFD, a GPS IFD and an
    IFD1 pointing at a small JPEG thumbnail (Pillow writes no IFD1: appended here)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x8298] = "Canon", "EOS R5", COPYRIGHT
    exif[0x0112] = orientation
    exif[0x011A] = exif[0x011B] = 72.0
    exif.get_ifd(0x8769).update({0x9003: "2026:01:02 03:04:05", 0xA002: 40, 0xA003: 30})
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    raw = bytearray(exif.tobytes()[6:])  # the TIFF structure, big-endian ("MM")
    thumb = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(thumb, "JPEG")
    first = struct.unpack(">I", raw[4:8])[0]
    count = struct.unpack(">H", raw[first:first + 2])[0]
    next_at = first + 2 + 12 * count
    ifd1_at = len(raw) + len(raw) % 2
    raw += b"\0" * (ifd1_at - len(raw))
    data_at = ifd1_at + 2 + 2 * 12 + 4
    raw[next_at:next_at + 4] = struct.pack(">I", ifd1_at)
    raw += struct.pack(">H", 2) + struct.pack(">HHII", 0x0201, 4, 1, data_at) + \
        struct.pack(">HHII", 0x0202, 4, 1, len(thumb.getvalue())) + b"\0\0\0\0"
    raw += thumb.getvalue()
    return b"Exif\x00\x00" + bytes(raw)


def _png_iptc_chunk(iptc: bytes) -> bytes:
    hexed = iptc.hex()
    text = f"\niptc\n{len(iptc):8d}\n{hexed}\n".encode()
    body = b"Raw profile type iptc\x00\x00" + zlib.compress(text)
    return struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(
        ">I", zlib.crc32(b"zTXt" + body))


def with_metadata(im: Image.Image, fmt: str, orientation: int = 6,
                  icc: bytes | None = None) -> bytes:
    """``im`` saved as ``fmt`` (JPEG, PNG, TIFF) with EXIF, XMP, IPTC (and ``icc``)."""
    buf = io.BytesIO()
    kwargs = {"exif": camera_exif(orientation)}
    if icc:
        kwargs["icc_profile"] = icc
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=92, xmp=XMP, **kwargs)
        from upscaler.compute.jpeg import with_iptc

        return with_iptc(buf.getvalue(), IPTC)
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        im.save(buf, "PNG", pnginfo=info, **kwargs)
        png = buf.getvalue()
        return png[:33] + _png_iptc_chunk(IPTC) + png[33:]
    # Pillow's TIFF writer keeps no EXIF IFDs: added as the service adds them to its TIFFs.
    from upscaler.compute.metadata import ImageMetadata
    from upscaler.compute.tiff_metadata import add_tiff_metadata

    im.save(buf, "TIFF", **kwargs)  # (of the EXIF, Pillow writes the Orientation alone)
    add_tiff_metadata(buf, ImageMetadata(camera_exif(orientation)[6:], XMP, IPTC))
    return buf.getvalue()
