"""EXIF, XMP and IPTC added to a classic TIFF after its writer (Pillow/libtiff or tifffile,
neither of which writes EXIF sub-IFDs for every image kind) is done: the new tags and their
data are appended, then a new first IFD (the old entries, whose offsets stay valid, plus the
new ones) and the header pointed at it. The old first IFD stays behind, unreferenced (a few
hundred bytes). Works on any seekable file, so a streamed output on disk is patched in place.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from PIL import Image, TiffImagePlugin

from upscaler.compute.metadata import (
    EXIF_IFD,
    EXIF_PREFIX,
    GPS_IFD,
    TIFF_DESCRIPTIVE_TAGS,
    ImageMetadata,
)

XMP_TAG, IPTC_TAG = 700, 33723
_BYTE, _UNDEFINED = 1, 7


def add_tiff_metadata(fp: BinaryIO, metadata: ImageMetadata) -> bool:
    """Add ``metadata`` to the classic TIFF in ``fp`` (positioned anywhere); False, and nothing
    written, for a BigTIFF or a file that is not a TIFF."""
    fp.seek(0)
    head = fp.read(8)
    if head[:4] not in (b"II*\x00", b"MM\x00*"):
        return False
    endian = "<" if head[:2] == b"II" else ">"
    first = struct.unpack(endian + "I", head[4:8])[0]
    fp.seek(first)
    (count,) = struct.unpack(endian + "H", fp.read(2))
    old = fp.read(12 * count)
    next_ifd = fp.read(4)
    entries = {struct.unpack(endian + "H", old[i:i + 2])[0]: old[i:i + 12]
               for i in range(0, len(old), 12)}

    new = TiffImagePlugin.ImageFileDirectory_v2(ifh=head)
    if metadata.exif:
        exif = Image.Exif()
        exif.load(EXIF_PREFIX + metadata.exif)
        for tag in TIFF_DESCRIPTIVE_TAGS:
            if tag in exif and tag not in entries:
                new[tag] = exif[tag]
        for ifd in (EXIF_IFD, GPS_IFD):
            if values := exif.get_ifd(ifd):
                new[ifd] = values
    if metadata.xmp:
        new.tagtype[XMP_TAG] = _BYTE
        new[XMP_TAG] = metadata.xmp
    if metadata.iptc:
        new.tagtype[IPTC_TAG] = _UNDEFINED
        new[IPTC_TAG] = metadata.iptc
    if not len(new):
        return True

    end = fp.seek(0, 2)
    at = end + end % 2  # IFDs start on a word boundary
    # The new tags as an IFD of their own at ``at`` (never referenced): its entries then point
    # at their data right behind it, and are copied into the new first IFD as they are.
    blob = new.tobytes(at)
    (added,) = struct.unpack(endian + "H", blob[:2])
    for i in range(added):
        entry = blob[2 + 12 * i:14 + 12 * i]
        entries[struct.unpack(endian + "H", entry[:2])[0]] = entry
    ifd_at = at + len(blob) + len(blob) % 2
    table = struct.pack(endian + "H", len(entries)) + b"".join(
        entries[tag] for tag in sorted(entries)) + next_ifd
    if ifd_at + len(table) >= 2**32:
        return False  # past classic TIFF's 4 GB of offsets
    fp.write(b"\x00" * (at - end) + blob + b"\x00" * (ifd_at - at - len(blob)) + table)
    fp.seek(4)
    fp.write(struct.pack(endian + "I", ifd_at))
    return True
