"""Writing an ``OutputImage`` to a file, strip by strip: PNG by rows, TIFF by tiles (BigTIFF
when the file may pass 4 GB), with the DPI, the ICC profile, the source's colour kind and bit
depth, and the request's print options (sRGB converted strip by strip, EXIF/XMP/IPTC). Small
outputs and JPEGs go through the whole-image encoders (``upscaler.compute.encode``: fpng is the
fastest there; libjpeg takes a whole image, at most 65,535 px a side); past
``WHOLE_IMAGE_MAX_PIXELS`` nothing holds more than a strip or a band of tiles.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from upscaler.compute.canvas import STRIP_ROWS, OutputImage, Plane
from upscaler.compute.colour import SrgbConverter, srgb_plan
from upscaler.compute.encode import encode_image, png_metadata_chunks
from upscaler.compute.encode_options import TIFFFILE_COMPRESSION, EncodeOptions, TiffCompression
from upscaler.compute.metadata import output_metadata
from upscaler.compute.png import WHOLE_IMAGE_MAX_PIXELS, PngEncoder, write_png_stream
from upscaler.compute.quantize import quantize_plane
from upscaler.compute.tiff_metadata import add_tiff_metadata

TIFF_TILE = 256
# Classic TIFF addresses its file with 32-bit offsets; past this (the raw pixels, with room for
# a compressor's worst case and the tags) the file is written as BigTIFF.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25


def needs_bigtiff(width: int, height: int, channels: int, itemsize: int) -> bool:
    """Whether a TIFF of these pixels may pass classic TIFF's 4 GB (judged on the raw size:
    compressed sizes are not known before they are written)."""
    raw = width * height * channels * itemsize
    return raw + raw // 100 > _CLASSIC_TIFF_LIMIT


def write_output(image: OutputImage, fmt: str, path: Path, dpi: int,
                 png_compress_level: int = 1, tiff_compression: TiffCompression = "deflate",
                 png_encoder: PngEncoder = "fast", options: EncodeOptions | None = None) -> int:
    """Write ``image`` as ``fmt`` (png / tiff / jpeg) to ``path``; returns the file's size."""
    options = options or EncodeOptions()
    if fmt == "jpeg" or image.width * image.height <= WHOLE_IMAGE_MAX_PIXELS:
        path.write_bytes(encode_image(image.to_decoded(), fmt, dpi, png_compress_level,
                                      tiff_compression, png_encoder, options))
        return path.stat().st_size
    srgb = options.output_profile == "srgb"
    if srgb:
        image = in_srgb(image)
    meta = None if options.metadata == "strip" else output_metadata(
        image.metadata, image.width, image.height, dpi, options.keep_gps, srgb=srgb)
    if fmt == "png":
        write_png_file(image, path, dpi, png_compress_level, png_metadata_chunks(meta))
    elif fmt == "tiff":
        write_tiff_file(image, path, dpi, tiff_compression)
        if meta:
            with open(path, "r+b") as f:
                add_tiff_metadata(f, meta)
    else:
        raise ValueError(f"no streamed writer for {fmt!r}")
    return path.stat().st_size


class _SrgbPlane:
    """A plane's rows converted to sRGB as they are read (``upscaler.compute.colour``)."""

    def __init__(self, plane: Plane, converter: SrgbConverter):
        self.plane, self.converter = plane, converter
        self.height, self.width, self.channels = plane.height, plane.width, 3

    def read_rows(self, top: int, count: int) -> np.ndarray:
        return self.converter.rows(self.plane.read_rows(top, count))


def in_srgb(image: OutputImage) -> OutputImage:
    """``image`` as ``output_profile=srgb`` writes it: ``srgb_plan``'s rule, strip by strip."""
    plan = srgb_plan(image.color, image.icc_profile, image.bit_depth)
    pixels = image.pixels if plan.converter is None else _SrgbPlane(image.pixels, plan.converter)
    return replace(image, pixels=pixels, color=plan.color, icc_profile=plan.icc_profile)


def _gray(rows: np.ndarray, bit_depth: int) -> np.ndarray:
    """The gray plane of rows whose three colour channels hold the same gray (as encode's)."""
    return quantize_plane((rows.sum(axis=2, dtype=np.uint32) + 1) // 3, bit_depth)


def _file_rows(image: OutputImage, rows: np.ndarray, cmyk: bool = False,
               cmyk_transform=None) -> np.ndarray:
    """Rows as the file has them: gray (+alpha) planes of a gray source, CMYK for a CMYK
    TIFF (through its profile, else Pillow's naive conversion), else RGB(A) as read."""
    if image.color == "gray":
        gray = _gray(rows[..., :3], image.bit_depth)[..., None]
        return np.concatenate([gray, rows[..., 3:]], axis=2) if rows.shape[2] == 4 else gray
    if cmyk:
        from PIL import Image, ImageCms

        strip = Image.fromarray(np.ascontiguousarray(rows), "RGB")
        return np.asarray(ImageCms.applyTransform(strip, cmyk_transform)
                          if cmyk_transform is not None else strip.convert("CMYK"))
    return rows


def _channels(image: OutputImage, cmyk: bool) -> int:
    colours = 1 if image.color == "gray" else 4 if cmyk else 3
    return colours + (image.alpha is not None)


def _icc(image: OutputImage, cmyk_tiff: bool) -> bytes | None:
    """The profile written: the source's, but sRGB for a CMYK source written as RGB."""
    if image.color == "cmyk" and not cmyk_tiff:
        from upscaler.compute.images import srgb_profile

        return srgb_profile().tobytes()
    return image.icc_profile


def write_png_file(image: OutputImage, path: Path, dpi: int, level: int,
                   more: bytes = b"") -> None:
    """A PNG written by rows (``STRIP_ROWS`` at a time) from the image's strips."""
    strips = (_file_rows(image, rows) for _, rows in image.strips(
        STRIP_ROWS, with_alpha=True))
    with open(path, "wb") as f:
        write_png_stream(f.write, image.width, image.height, _channels(image, False),
                         image.bit_depth == 16, strips, dpi, _icc(image, False), level, more)


def _cmyk_transform(icc: bytes | None):
    """sRGB to the source's CMYK profile (Pillow's CMYK conversion without one)."""
    from PIL import ImageCms

    from upscaler.compute.images import srgb_profile

    if icc:
        try:
            return ImageCms.buildTransform(srgb_profile(), ImageCms.ImageCmsProfile(
                io.BytesIO(icc)), "RGB", "CMYK")
        except (ImageCms.PyCMSError, OSError):
            pass
    return None


def _tiles(image: OutputImage, cmyk_transform, cmyk: bool) -> Iterator[np.ndarray]:
    """The file's tiles, row of tiles by row of tiles, each ``TIFF_TILE`` square (padded at
    the right and bottom edges, as TIFF wants): one band of rows in memory at a time."""
    channels = _channels(image, cmyk)
    dtype = np.uint16 if image.bit_depth == 16 else np.uint8
    for top in range(0, image.height, TIFF_TILE):
        band = _file_rows(image, image.read_rows(top, TIFF_TILE, with_alpha=True), cmyk,
                          cmyk_transform)
        for left in range(0, image.width, TIFF_TILE):
            tile = band[:, left:left + TIFF_TILE]
            if tile.shape[:2] != (TIFF_TILE, TIFF_TILE):
                padded = np.zeros((TIFF_TILE, TIFF_TILE, channels), dtype)
                padded[:tile.shape[0], :tile.shape[1]] = tile
                tile = padded
            yield np.ascontiguousarray(tile if channels > 1 else tile[..., 0])


def write_tiff_file(image: OutputImage, path: Path, dpi: int,
                    compression: TiffCompression | None = "deflate") -> None:
    """A tiled TIFF (BigTIFF when it may pass 4 GB) written tile by tile from row bands."""
    import tifffile

    # Print shops take CMYK TIFF: a CMYK source goes back through its profile (no alpha).
    cmyk = image.color == "cmyk" and image.alpha is None
    transform = _cmyk_transform(image.icc_profile) if cmyk else None
    channels = _channels(image, cmyk)
    dtype = np.uint16 if image.bit_depth == 16 else np.uint8
    photometric = "separated" if cmyk else "rgb" if channels >= 3 else "minisblack"
    codec = TIFFFILE_COMPRESSION[compression or "none"]
    with tifffile.TiffWriter(path, bigtiff=needs_bigtiff(
            image.width, image.height, channels, dtype().itemsize)) as tif:
        shape = (image.height, image.width) + ((channels,) if channels > 1 else ())
        tif.write(_tiles(image, transform, cmyk), shape=shape, dtype=dtype,
                  tile=(TIFF_TILE, TIFF_TILE), photometric=photometric,
                  planarconfig="contig" if channels > 1 else None, compression=codec,
                  extrasamples=["unassalpha"] if image.alpha is not None else None,
                  resolution=(dpi, dpi), resolutionunit="INCH",
                  iccprofile=_icc(image, cmyk),
                  # No shape description or Software tag of tifffile's own in a print's file.
                  metadata=None, software=False)
