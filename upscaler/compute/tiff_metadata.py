"""EXIF, XMP and IPTC added to a TIFF after its writer (Pillow/libtiff or tifffile, neither of
which writes EXIF sub-IFDs for every image kind) is done: the new tags and their data are
appended, then a new first IFD (the old entries, whose offsets stay valid, plus the new ones)
and the header pointed at it. The old first IFD stays behind, unreferenced (a few hundred
bytes). Works on any seekable file, so a streamed output on disk is patched in place, classic
TIFF or (little-endian, as tifffile writes it) BigTIFF past 4 GB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
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
_BYTE, _UNDEFINED, _LONG, _LONG8 = 1, 7, 4, 16


@dataclass(frozen=True)
class _Layout:
    """Where a TIFF kind keeps its first IFD's offset, and its IFDs' field sizes."""

    first_at: int  # where the header holds the first IFD's offset (the header's last field)
    count: str  # struct code of an IFD's entry count
    offset: str  # of an offset (the first IFD's, the next IFD's, an entry's value)
    entry: int  # bytes of an IFD entry
    limit: int  # offsets it can address

    @property
    def count_size(self) -> int:
        return struct.calcsize(self.count)

    @property
    def offset_size(self) -> int:
        return struct.calcsize(self.offset)

    @property
    def header(self) -> int:
        return self.first_at + self.offset_size


_CLASSIC = _Layout(4, "H", "I", 12, 2**32)
_BIG = _Layout(8, "Q", "Q", 20, 2**64)
_KINDS = {b"II*\x00": ("<", _CLASSIC), b"MM\x00*": (">", _CLASSIC),
          # Pillow tells a BigTIFF IFD by the header's third byte: little-endian only.
          b"II+\x00": ("<", _BIG)}


def add_tiff_metadata(fp: BinaryIO, metadata: ImageMetadata) -> bool:
    """Add ``metadata`` to the TIFF in ``fp`` (positioned anywhere); False, and nothing
    written, for a file that is not a TIFF this can patch (a big-endian BigTIFF)."""
    fp.seek(0)
    head = fp.read(16)
    if head[:4] not in _KINDS:
        return False
    endian, layout = _KINDS[head[:4]]
    if layout is _BIG and head[4:8] != struct.pack(endian + "HH", 8, 0):
        return False
    head = head[:layout.header]
    (first,) = struct.unpack(endian + layout.offset, head[layout.first_at:])
    fp.seek(first)
    (count,) = struct.unpack(endian + layout.count, fp.read(layout.count_size))
    old = fp.read(layout.entry * count)
    next_ifd = fp.read(layout.offset_size)
    entries = {struct.unpack(endian + "H", old[i:i + 2])[0]: old[i:i + layout.entry]
               for i in range(0, len(old), layout.entry)}

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
    (added,) = struct.unpack(endian + layout.count, blob[:layout.count_size])
    for i in range(added):
        at_entry = layout.count_size + layout.entry * i
        entry = blob[at_entry:at_entry + layout.entry]
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        if layout is _BIG and kind == _LONG and tag in (EXIF_IFD, GPS_IFD):
            # Pillow types a sub-IFD's offset LONG, in an 8-byte field; past 4 GB a reader of
            # a LONG would see its low half only. LONG8 reads the whole of it.
            entry = entry[:2] + struct.pack(endian + "H", _LONG8) + entry[4:]
        entries[tag] = entry
    ifd_at = at + len(blob) + len(blob) % 2
    table = struct.pack(endian + layout.count, len(entries)) + b"".join(
        entries[tag] for tag in sorted(entries)) + next_ifd
    if ifd_at + len(table) >= layout.limit:
        return False  # past what its offsets address (classic TIFF: 4 GB)
    fp.write(b"\x00" * (at - end) + blob + b"\x00" * (ifd_at - at - len(blob)) + table)
    fp.seek(layout.first_at)
    fp.write(struct.pack(endian + layout.offset, ifd_at))
    return True
