"""Encoding every engine's result: the source's colour kind and bit depth, the DPI written in,
the ICC profile kept. Pixels come as float32 in [0, 1] or already as the file's integers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms

from upscaler.compute.colour import to_srgb
from upscaler.compute.encode_options import (
    PILLOW_TIFF_COMPRESSION,
    TIFFFILE_COMPRESSION,
    EncodeOptions,
    TiffCompression,
)
from upscaler.compute.images import OUTPUT_FORMATS, DecodedImage, srgb_profile
from upscaler.compute.jpeg import encode_jpeg
from upscaler.compute.metadata import ImageMetadata, output_metadata, raw_profile_text
from upscaler.compute.png import (
    FAST_WIDE_ARGS,
    WHOLE_IMAGE_MAX_PIXELS,
    PngEncoder,
    fpng_encode,
    png_add_metadata,
    png_insert_chunks,
    png_text_chunks,
    streamed_png,
)
from upscaler.compute.quantize import quantize_plane
from upscaler.compute.tiff_metadata import add_tiff_metadata


def _gray(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """One gray plane of an RGB image (whose three channels hold the same gray)."""
    if np.issubdtype(rgb.dtype, np.integer):
        return quantize_plane((rgb.sum(axis=2, dtype=np.uint32) + 1) // 3, bit_depth)
    return quantize_plane(rgb.mean(axis=2), bit_depth)


def encode_image(image: DecodedImage, fmt: str, dpi: int, png_compress_level: int = 1,
                 tiff_compression: TiffCompression = "deflate",
                 png_encoder: PngEncoder = "fast",
                 options: EncodeOptions | None = None) -> bytes:
    """Write the image in its source colour kind and bit depth, with DPI and ICC profile (JPEG:
    8-bit, alpha over white, ``upscaler.compute.jpeg``), and the input's EXIF/XMP/IPTC
    rewritten for the output (``upscaler.compute.metadata``) unless ``options`` strip them.

    PNGs: with ``png_encoder`` "fast", 8-bit RGB(A) go through fpng and 16-bit through zlib's
    RLE strategy (``upscaler.compute.png``); colour images past ``WHOLE_IMAGE_MAX_PIXELS`` are
    streamed strip by strip instead, to keep memory near the image's own size.
    ``png_compress_level`` sets zlib's level."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}")
    options = options or EncodeOptions()
    if options.output_profile == "srgb":
        image = to_srgb(image)
    meta = None if options.metadata == "strip" else output_metadata(
        image.metadata, image.width, image.height, dpi, options.keep_gps,
        srgb=options.output_profile == "srgb")
    if fmt == "jpeg":
        return encode_jpeg(image, dpi, options.jpeg_quality, meta)
    encoded = _encode_lossless(image, fmt, dpi, png_compress_level, tiff_compression,
                               png_encoder, meta)
    if fmt == "tiff" and meta:
        out = io.BytesIO(encoded)
        add_tiff_metadata(out, meta)
        return out.getvalue()
    return encoded


def png_metadata_chunks(meta: ImageMetadata | None) -> bytes:
    """EXIF, XMP and IPTC as PNG chunks (none for None)."""
    if not meta:
        return b""
    return png_text_chunks(meta.exif, meta.xmp,
                           raw_profile_text("iptc", meta.iptc) if meta.iptc else None)


def _encode_lossless(image: DecodedImage, fmt: str, dpi: int, png_compress_level: int,
                     tiff_compression: TiffCompression, png_encoder: PngEncoder,
                     meta: ImageMetadata | None) -> bytes:
    """PNG and TIFF (the TIFF's metadata is added after, ``add_tiff_metadata``)."""
    chunks = png_metadata_chunks(meta) if fmt == "png" else b""
    depth = image.bit_depth
    alpha = None if image.alpha is None else quantize_plane(image.alpha, depth)
    icc = image.icc_profile
    buf = io.BytesIO()

    if image.color == "gray":
        plane = _gray(image.rgb, depth)
        if depth == 16 and alpha is not None:
            return _encode_wide(np.dstack([plane, alpha]), fmt, dpi, icc, png_compress_level,
                                png_encoder, tiff_compression, chunks)
        if depth == 16:
            im = Image.fromarray(plane)  # I;16
        elif alpha is not None:
            im = Image.fromarray(np.dstack([plane, alpha]), "LA")
        else:
            im = Image.fromarray(plane, "L")
    else:
        rgb = quantize_plane(image.rgb, depth)
        if fmt == "png" and png_encoder == "fast" and image.color != "cmyk" and (
                rgb.shape[0] * rgb.shape[1] > WHOLE_IMAGE_MAX_PIXELS):
            return streamed_png(rgb, alpha, dpi, icc, png_compress_level, chunks)
        if depth == 16:
            arr = rgb if alpha is None else np.dstack([rgb, alpha])
            return _encode_wide(arr, fmt, dpi, icc, png_compress_level, png_encoder,
                                tiff_compression, chunks)
        pixels = rgb if alpha is None else np.dstack([rgb, alpha])
        cmyk_tiff = image.color == "cmyk" and fmt == "tiff" and alpha is None
        if image.color == "cmyk" and not cmyk_tiff:
            icc = srgb_profile().tobytes()  # the pixels are sRGB now
        # The fast path: the engine's uint8 array is read in place (no Pillow copy).
        if fmt == "png" and png_encoder == "fast" and (png := fpng_encode(pixels)) is not None:
            return png_add_metadata(png, dpi, icc, chunks)
        im = Image.fromarray(pixels, "RGB" if alpha is None else "RGBA")
        if cmyk_tiff:
            # Print shops take CMYK TIFF: go back through the source profile.
            if icc:
                try:
                    im = ImageCms.profileToProfile(
                        im, srgb_profile(), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                        outputMode="CMYK")
                except (ImageCms.PyCMSError, OSError):
                    im = im.convert("CMYK")
            else:
                im = im.convert("CMYK")

    kwargs: dict = {"dpi": (dpi, dpi)}
    if icc:
        kwargs["icc_profile"] = icc
    if fmt == "png":
        im.save(buf, "PNG", compress_level=png_compress_level, **kwargs)
        return png_insert_chunks(buf.getvalue(), chunks)
    im.save(buf, "TIFF", compression=PILLOW_TIFF_COMPRESSION[tiff_compression], **kwargs)
    return buf.getvalue()


def _encode_wide(arr: np.ndarray, fmt: str, dpi: int, icc: bytes | None, level: int,
                 png_encoder: PngEncoder, tiff_compression: TiffCompression = "deflate",
                 chunks: bytes = b"") -> bytes:
    """16-bit multi-channel images, which Pillow cannot write."""
    import imagecodecs
    import tifffile

    if fmt == "png":
        extra = FAST_WIDE_ARGS if png_encoder == "fast" else {}
        png = imagecodecs.png_encode(arr, level=level, **extra)
        return png_add_metadata(bytes(png), dpi, icc, chunks)
    buf = io.BytesIO()
    channels = arr.shape[-1]
    photometric = "rgb" if channels >= 3 else "minisblack"
    extrasamples = ["unassalpha"] if channels in (2, 4) else None
    tifffile.imwrite(buf, arr, photometric=photometric,
                     compression=TIFFFILE_COMPRESSION[tiff_compression],
                     resolution=(dpi, dpi), resolutionunit="INCH", iccprofile=icc,
                     extrasamples=extrasamples, metadata=None, software=False)
    return buf.getvalue()
