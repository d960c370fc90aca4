"""Image decoding and validation: every engine reads images through here (and writes them
through ``upscaler.compute.encode``).

Decoded images are float32 arrays in [0, 1] (RGB, H x W x 3) plus an optional alpha plane, with
what is needed to write them back the same way: colour kind (rgb / gray / cmyk), bit depth and the
ICC profile. Content is sniffed (never trusted from a file name); sizes are checked before pixels
are decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from upscaler.compute.metadata import ImageMetadata, read_metadata
from upscaler.errors import BadRequest, InvalidImage, PayloadTooLarge, UnsupportedMediaType

if TYPE_CHECKING:
    from upscaler.compute.canvas_file import Canvas

# Formats accepted as input (Pillow's names). Anything else Pillow can parse is refused.
ALLOWED_INPUT_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP", "GIF"})
# The only decoders Pillow may try on an upload (its JPEG opener also yields MPO).
OPENERS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
OUTPUT_FORMATS = ("png", "tiff", "jpeg")
MEDIA_TYPES = {"png": "image/png", "tiff": "image/tiff", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class ImageProbe:
    format: str
    width: int
    height: int
    mode: str
    bit_depth: int
    has_alpha: bool
    # Decoded by strips into a file (upscaler.compute.streamed_decode), this many bytes a
    # strip: its check and its job hold a strip of it, not all of it. 0: decoded whole.
    strip_bytes: int = 0

    @property
    def streamed(self) -> bool:
        return self.strip_bytes > 0


@dataclass
class DecodedImage:
    # float32 in [0, 1]; or, from an engine that wrote its output as the file will hold it,
    # integers of bit_depth (uint8/uint16), which encode_image takes as they are.
    # H x W x 3; or, for a big upload decoded by strips, on disk (compute.streamed_decode)
    rgb: np.ndarray | Canvas
    alpha: np.ndarray | None  # H x W
    color: Literal["rgb", "gray", "cmyk"]
    bit_depth: int  # 8 or 16: what the output is written with
    icc_profile: bytes | None
    source_format: str
    # The input's EXIF/XMP/IPTC (small, capped blocks), rewritten for the output at encode.
    metadata: ImageMetadata | None = None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def with_pixels(self, rgb: np.ndarray, alpha: np.ndarray | None) -> DecodedImage:
        return replace(self, rgb=rgb, alpha=alpha)

    def cropped(self, box: tuple[int, int, int, int] | None) -> DecodedImage:
        """The (left, top, right, bottom) part of the image; all of it for ``None``."""
        if box is None:
            return self
        left, top, right, bottom = box
        alpha = None if self.alpha is None else self.alpha[top:bottom, left:right]
        return self.with_pixels(np.ascontiguousarray(self.rgb[top:bottom, left:right]),
                                None if alpha is None else np.ascontiguousarray(alpha))


# --- sniffing and limits ---------------------------------------------------------------------

def _png_ihdr(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, or None if not a PNG."""
    if len(data) >= 29 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def open_upload(data: bytes | Path, max_pixels: int) -> Image.Image:
    """The upload (its bytes, or a file of them) opened by Pillow, header only, checked."""
    if not (data if isinstance(data, bytes) else data.stat().st_size):
        raise BadRequest("the uploaded file is empty", code="empty_file")
    with warnings.catch_warnings():
        # ``max_pixels`` decides what is too large, not Pillow's global MAX_IMAGE_PIXELS (about
        # 89 M): turning its warning into an error refused images between that and our limit.
        # Its DecompressionBombError (over twice that) still stops a bomb before any decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Past ~179 M pixels the bomb check would refuse what a raised max_pixels allows:
        # it moves up with the limit (never down), still stopping anything beyond it.
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data,
                            formats=OPENERS)
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(
                f"image is too large to decode safely ({exc}); the limit is "
                f"{max_pixels:,} pixels", code="image_too_large") from exc
        except UnidentifiedImageError as exc:
            raise UnsupportedMediaType(
                "the file is not an image this service reads; send PNG, JPEG, WebP, TIFF, BMP "
                "or GIF") from exc
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise InvalidImage(f"the image header is corrupt: {exc}") from exc
    if im.format not in ALLOWED_INPUT_FORMATS:
        raise UnsupportedMediaType(
            f"{im.format} images are not accepted; send PNG, JPEG, WebP, TIFF, BMP or GIF")
    w, h = im.size
    if w < 1 or h < 1:
        raise InvalidImage(f"the image has zero size ({w}x{h})", code="empty_image")
    if w * h > max_pixels:
        raise PayloadTooLarge(
            f"the image has {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}",
            code="image_too_large")
    return im


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from exc


def probe_image(data: bytes, max_pixels: int) -> ImageProbe:
    """Describe an upload from its header alone: format (an accepted one), size after EXIF
    orientation (within ``max_pixels``), mode, bit depth, alpha. Nothing is decoded, so the
    output size can be planned and refused before any pixel memory is spent."""
    im = open_upload(data, max_pixels)
    width, height = im.size
    # Rotated by 90 degrees; Pillow's TIFF reader already reports the rotated size.
    if im.format != "TIFF" and _exif_orientation(im) in (5, 6, 7, 8):
        width, height = height, width
    strip_bytes = strip_rows(im) * im.width * len(im.mode) if is_streamed(im, data[:64]) else 0
    return ImageProbe(format=str(im.format), width=width, height=height, mode=im.mode,
                      bit_depth=_header_bit_depth(im, data), has_alpha=_header_alpha(im),
                      strip_bytes=strip_bytes)


STREAMED_FORMATS = ("PNG", "TIFF", "JPEG")
# Below this the in-memory decoders are as small (3 bytes a pixel: 48 MB) and a little faster.
STREAMED_MIN_PIXELS = 16_000_000
STREAMED_STRIP_BYTES = 16 << 20  # rows decoded at a time: ~16 MB, however wide the image
STREAMED_MAX_BLOCK_BYTES = 64 << 20  # a codec block bigger than this: decoded whole


def is_streamed(im: Image.Image, head: bytes) -> bool:
    """Whether an upload Pillow has opened (header only; ``head`` its first bytes) is decoded
    by strips (upscaler.compute.streamed_decode): an accepted format, 8-bit RGB or RGBA with no
    colour key, one frame, upright, at least ``STREAMED_MIN_PIXELS``, and stored so that its
    rows come a few at a time. (A rotated image needs all its rows to turn; an interlaced PNG
    or a progressive JPEG is decoded whole by its codec, and so is a TIFF strip or tile.)"""
    return (im.format in STREAMED_FORMATS and im.mode in ("RGB", "RGBA")
            and im.width * im.height >= STREAMED_MIN_PIXELS
            and "transparency" not in im.info and not getattr(im, "is_animated", False)
            and not im.info.get("interlace") and not im.info.get("progressive")
            and _header_bit_depth(im, head) == 8 and _exif_orientation(im) == 1
            and block_rows(im) * im.width * len(im.mode) <= STREAMED_MAX_BLOCK_BYTES)


def block_rows(im: Image.Image) -> int:
    """Rows a strip decode must come in multiples of: its codec's block (a TIFF's strip or
    tile, a JPEG's MCU row) and libvips's sequential reads (16 rows)."""
    if im.format == "TIFF":
        tags = im.tag_v2
        rows = tags.get(322) and tags.get(323) or tags.get(278) or im.height  # tile, strip
        return math.lcm(int(min(rows, im.height)), 16)
    return 16


def strip_rows(im: Image.Image) -> int:
    """Rows a streamed decode reads at a time: about ``STREAMED_STRIP_BYTES``, in whole blocks
    (a strip that ends inside one would read it again, out of order)."""
    block = block_rows(im)
    return max(1, STREAMED_STRIP_BYTES // (im.width * len(im.mode)) // block) * block


def _header_bit_depth(im: Image.Image, data: bytes) -> int:
    if (ihdr := _png_ihdr(data)) is not None:
        return 16 if ihdr[0] == 16 else 8
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))  # BitsPerSample
        return 16 if max(bits if isinstance(bits, tuple) else (bits,)) >= 16 else 8
    return 8


def _header_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "RGBa", "PA", "LA", "La") or (
        im.mode in ("P", "RGB", "L") and "transparency" in im.info)


# --- decoding --------------------------------------------------------------------------------

def _decode_16bit_color(data: bytes, fmt: str) -> np.ndarray | None:
    """16-bit RGB(A) or gray+alpha PNG/TIFF as uint16 H x W x C (C = 2, 3 or 4).

    Pillow would truncate these to 8 bits (and opens 16-bit gray+alpha PNG as 8-bit RGBA).
    """
    import imagecodecs
    import tifffile

    if fmt == "PNG":
        ihdr = _png_ihdr(data)
        if ihdr and ihdr[0] == 16 and ihdr[1] in (2, 4, 6):
            arr = np.asarray(imagecodecs.png_decode(data))
            return arr if arr.ndim == 3 and arr.dtype == np.uint16 else None
        return None
    if fmt == "TIFF":
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and page.samplesperpixel >= 3
            gray_alpha = page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and \
                page.samplesperpixel == 2
            if page.bitspersample == 16 and (rgb or gray_alpha):
                arr = page.asarray()
                # Planar TIFFs come samples-first; go by the tag, not the shape (a 3-pixel-wide
                # contiguous image looks planar by shape).
                if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and arr.ndim == 3:
                    arr = np.moveaxis(arr, 0, -1)
                if arr.ndim != 3 or arr.dtype != np.uint16:
                    return None
                return arr[..., :4] if rgb else arr
    return None


def _decode_png_8bit(data: bytes, im: Image.Image) -> np.ndarray | None:
    """An 8-bit RGB(A) PNG straight into one H x W x C array (libpng through imagecodecs):
    no Pillow image beside it at the decode's peak (4 bytes a pixel more). None for any other
    kind of image (palettes, tRNS colour keys, gray, animations: Pillow's)."""
    ihdr = _png_ihdr(data)
    if ihdr not in ((8, 2), (8, 6)) or "transparency" in im.info or getattr(
            im, "is_animated", False):
        return None
    import imagecodecs

    try:
        arr = np.asarray(imagecodecs.png_decode(data))
    except Exception as exc:  # noqa: BLE001 - any codec failure is a corrupt upload
        raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from exc
    if arr.ndim != 3 or arr.dtype != np.uint8:
        return None
    oriented = _apply_orientation(arr, _exif_orientation(im))
    return oriented if oriented is arr else np.ascontiguousarray(oriented)


def _icc_from_tiff(data: bytes) -> bytes | None:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tag = tif.pages[0].tags.get(34675)
        return bytes(tag.value) if tag is not None else None


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF/TIFF Orientation (1-8) of an image Pillow has opened but not decoded."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # (getexif() would decode the whole PNG looking for a late eXIf chunk)
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a good image
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """What ImageOps.exif_transpose does, for the H x W x C arrays Pillow cannot hold."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def decode_image(data: bytes, max_pixels: int, integers: bool = False) -> DecodedImage:
    """The upload's pixels. With ``integers``, 8- and 16-bit RGB(A) and 8-bit gray come as
    the file's integers (uint8 / uint16), not float32: a quarter (a half) of the memory, and
    no float copy at the decode's peak (ESRGAN converts each tile as it is cut)."""
    im = open_upload(data, max_pixels)
    image = _decode_pixels(im, data, integers)
    # After the pixels: a PNG's eXIf chunk may follow its image data.
    return replace(image, metadata=read_metadata(im))


def _decode_pixels(im: Image.Image, data: bytes, integers: bool) -> DecodedImage:
    fmt = str(im.format)
    try:
        wide = _decode_16bit_color(data, fmt)
    except Exception as exc:  # noqa: BLE001 - any codec failure is a corrupt upload
        raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from exc
    if wide is not None:
        icc = im.info.get("icc_profile") or (_icc_from_tiff(data) if fmt == "TIFF" else None)
        pixels = _apply_orientation(wide, _exif_orientation(im))
        if not integers:
            pixels = pixels.astype(np.float32) / 65535.0
        if pixels.shape[-1] == 2:  # gray + alpha
            rgb = np.repeat(pixels[..., :1], 3, axis=2)
            return DecodedImage(rgb, pixels[..., 1].copy(), "gray", 16, icc, fmt)
        alpha = pixels[..., 3].copy() if pixels.shape[-1] == 4 else None
        return DecodedImage(np.ascontiguousarray(pixels[..., :3]), alpha, "rgb", 16, icc, fmt)

    if integers and (arr := _decode_png_8bit(data, im)) is not None:
        alpha = arr[..., 3].copy() if arr.shape[-1] == 4 else None
        rgb = arr if alpha is None else np.ascontiguousarray(arr[..., :3])
        return DecodedImage(rgb, alpha, "rgb", 8, im.info.get("icc_profile"), fmt)

    # Animated GIF/WebP/PNG, multi-page TIFF, MPO: Image.open is at the first frame, which is
    # the one used. (Asking n_frames would walk the whole file: slow, and a damaged later frame
    # raised IndexError from the GIF reader, an HTTP 500.)
    _load(im)
    with contextlib.suppress(Exception):  # a broken EXIF block must not reject a good image
        im = ImageOps.exif_transpose(im)
    icc = im.info.get("icc_profile")
    mode = im.mode

    if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16"):
        bit_depth = 8
        alpha = None
        if mode in ("LA", "La"):
            alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
            gray = np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
        elif mode == "L" and "transparency" in im.info:  # tRNS: one gray value transparent
            la = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
            gray, alpha = la[..., 0], la[..., 1].copy()
        elif mode in ("1", "L") and integers:
            gray = np.asarray(im.convert("L"))
        elif mode in ("1", "L"):
            gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        else:  # 16-bit / 32-bit integer or float gray
            arr = np.asarray(im).astype(np.float32)
            bit_depth = 16
            gray = np.clip(arr / 65535.0, 0.0, 1.0)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        return DecodedImage(rgb, alpha, "gray", bit_depth, icc, fmt)

    if mode == "CMYK":
        if icc:
            try:
                rgb_im = ImageCms.profileToProfile(
                    im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb_profile(),
                    outputMode="RGB")
            except (ImageCms.PyCMSError, OSError):
                rgb_im = im.convert("RGB")
        else:
            rgb_im = im.convert("RGB")
        rgb = np.asarray(rgb_im, dtype=np.float32) / 255.0
        return DecodedImage(rgb, None, "cmyk", 8, icc, fmt)

    has_alpha = mode in ("RGBA", "RGBa", "PA", "LA") or (
        mode in ("P", "RGB") and "transparency" in im.info)  # RGB: a tRNS colour key
    im = im.convert("RGBA" if has_alpha else "RGB")
    if integers:
        arr = np.array(im)
        del im  # Pillow's copy (4 bytes a pixel) goes before the alpha is split off
        alpha = arr[..., 3].copy() if has_alpha else None
        return DecodedImage(arr if not has_alpha else np.ascontiguousarray(arr[..., :3]),
                            alpha, "rgb", 8, icc, fmt)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    alpha = arr[..., 3].copy() if has_alpha else None
    return DecodedImage(np.ascontiguousarray(arr[..., :3]), alpha, "rgb", 8, icc, fmt)


def srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
