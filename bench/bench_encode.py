"""Lossless PNG writers on a real photo's 4096x3072 upscale: time, size, extra memory, exact.

    python bench/bench_encode.py [--repeat 5] [--width 4096 --height 3072]

The image is scikit-image's astronaut cropped to 4:3 and upscaled with Pillow's LANCZOS (in
float per channel for the 16-bit cases), as an upscaler's output looks: a photo, not noise,
which compresses nothing like one. Cases: 8-bit RGB, 8-bit RGBA, 16-bit RGB, 16-bit RGBA (the
alpha a soft-edged ellipse). Every writer's file is decoded again with libpng (imagecodecs) and
compared with the pixels given: a writer that is not exact is marked and never chosen.

Writers that are not dependencies of the project (pyvips with pyvips-binary,
opencv-python-headless, pyspng-seunglab) are measured when importable and listed as missing
otherwise; put them on PYTHONPATH to include them. The last rows are the project's own
``encode_image`` (DPI and an ICC profile written too), so the table shows what a job pays.

Columns: median seconds of ``--repeat`` runs; MB (10^6 bytes); peak MB: how far the process's
peak RSS rose above its RSS before the call (Linux, reset through /proc/self/clear_refs), i.e.
the writer's own buffers beyond the input and an output of that size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagecodecs  # noqa: E402
from figures import report  # noqa: E402
from PIL import Image, ImageCms  # noqa: E402

from upscaler.compute.encode import encode_image  # noqa: E402
from upscaler.compute.images import DecodedImage  # noqa: E402
from upscaler.compute.png import FAST_WIDE_ARGS  # noqa: E402

Writer = Callable[[np.ndarray], bytes]
CASES = ("8-bit RGB", "8-bit RGBA", "16-bit RGB", "16-bit RGBA")


# --- the image -------------------------------------------------------------------------------

def photo(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit RGB, float32 RGB in [0, 1]) of the astronaut at width x height."""
    from skimage import data

    src = data.astronaut()  # 512 x 512
    crop_h = round(src.shape[1] * height / width)
    top = (src.shape[0] - crop_h) // 2
    im = Image.fromarray(np.ascontiguousarray(src[top:top + crop_h]))
    rgb8 = np.asarray(im.resize((width, height), Image.Resampling.LANCZOS))
    # 16-bit: resample each channel in float, as an engine's float output is, so the low bits
    # are a smooth image's, not 8-bit values times 257.
    planes = [np.asarray(Image.fromarray(np.asarray(im)[..., c].astype(np.float32) / 255.0, "F")
                         .resize((width, height), Image.Resampling.LANCZOS)) for c in range(3)]
    return rgb8, np.clip(np.dstack(planes), 0.0, 1.0)


def soft_alpha(width: int, height: int) -> np.ndarray:
    """An ellipse, opaque inside, fading to transparent over ~5% of the width: float [0, 1]."""
    y, x = np.ogrid[-1.0:1.0:height * 1j, -1.0:1.0:width * 1j]
    return np.clip((1.0 - np.sqrt(x * x + y * y)) * 10.0, 0.0, 1.0).astype(np.float32)


def q16(x: np.ndarray) -> np.ndarray:
    return (x * 65535.0 + 0.5).astype(np.uint16)


def images(width: int, height: int) -> dict[str, np.ndarray]:
    rgb8, rgbf = photo(width, height)
    alpha = soft_alpha(width, height)
    return {
        "8-bit RGB": rgb8,
        "8-bit RGBA": np.dstack([rgb8, (alpha * 255.0 + 0.5).astype(np.uint8)]),
        "16-bit RGB": q16(rgbf),
        "16-bit RGBA": np.dstack([q16(rgbf), q16(alpha)]),
    }


# --- the writers -----------------------------------------------------------------------------

def pillow(level: int) -> Writer:
    def write(arr: np.ndarray) -> bytes:
        import io

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG", compress_level=level)
        return buf.getvalue()
    return write


def codecs_png(level: int, fast: bool = False) -> Writer:
    # imagecodecs' own advice for speed: RLE strategy and the SUB filter (OpenCV's settings),
    # as upscaler.compute.png passes them.
    extra = dict(FAST_WIDE_ARGS) if fast else {}
    return lambda arr: bytes(imagecodecs.png_encode(arr, level=level, **extra))


def codecs_spng(level: int) -> Writer:
    return lambda arr: bytes(imagecodecs.spng_encode(arr, level=level))


def fpng_writer(arr: np.ndarray) -> bytes:
    import fpng

    return fpng.from_ndarray(arr)


def vips(level: int) -> Writer:
    def write(arr: np.ndarray) -> bytes:
        import pyvips

        im = pyvips.Image.new_from_memory(arr.data, arr.shape[1], arr.shape[0], arr.shape[2],
                                          "uchar" if arr.dtype == np.uint8 else "ushort")
        if arr.dtype == np.uint16:
            im = im.copy(interpretation="rgb16")
        return im.pngsave_buffer(compression=level, bitdepth=arr.itemsize * 8)
    return write


def opencv(level: int) -> Writer:
    def write(arr: np.ndarray) -> bytes:
        import cv2

        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        ok, out = cv2.imencode(".png", cv2.cvtColor(arr, code),
                               [cv2.IMWRITE_PNG_COMPRESSION, level])
        assert ok
        return out.tobytes()
    return write


def spng_seunglab(level: int) -> Writer:
    def write(arr: np.ndarray) -> bytes:
        import pyspng

        return pyspng.encode(arr, compress_level=level)
    return write


ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


_IMAGES: dict[int, DecodedImage] = {}


def project(arr: np.ndarray) -> bytes:
    """upscaler.compute.images.encode_image as a job calls it: integer planes as the ESRGAN engine
    leaves them (RGB and alpha apart, split once, outside the timing), DPI and ICC written."""
    if (image := _IMAGES.get(id(arr))) is None:
        alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None
        rgb = np.ascontiguousarray(arr[..., :3])
        image = _IMAGES[id(arr)] = DecodedImage(rgb, alpha, "rgb", arr.itemsize * 8, ICC, "PNG")
    return encode_image(image, "png", 300)


# name, module it needs (None: always here), the cases it writes
WRITERS: list[tuple[str, Writer, str | None, tuple[str, ...]]] = [
    ("Pillow compress_level 0", pillow(0), None, CASES[:2]),
    ("Pillow compress_level 1", pillow(1), None, CASES[:2]),
    ("Pillow compress_level 6", pillow(6), None, CASES[:2]),
    ("imagecodecs png_encode level 1", codecs_png(1), None, CASES),
    ("imagecodecs png_encode level 1 RLE+SUB", codecs_png(1, fast=True), None, CASES),
    ("imagecodecs png_encode level 6", codecs_png(6), None, CASES),
    ("imagecodecs spng_encode level 1", codecs_spng(1), None, CASES),
    ("fpng 0.1.0 from_ndarray", fpng_writer, "fpng", CASES[:2]),
    ("pyvips pngsave_buffer compression 1", vips(1), "pyvips", CASES),
    ("opencv imencode level 1 (RLE)", opencv(1), "cv2", CASES),
    ("pyspng-seunglab encode level 1", spng_seunglab(1), "pyspng", CASES[:2]),
    ("upscaler encode_image (DPI+ICC)", project, None, CASES),
]


# What upscaler.compute.images.encode_image writes each case with (png_encoder "fast").
CHOSEN = {
    "8-bit RGB": "fpng 0.1.0 from_ndarray",
    "8-bit RGBA": "fpng 0.1.0 from_ndarray",
    "16-bit RGB": "imagecodecs png_encode level 1 RLE+SUB",
    "16-bit RGBA": "imagecodecs png_encode level 1 RLE+SUB",
}


# --- measuring -------------------------------------------------------------------------------

def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


@dataclass
class Row:
    writer: str
    case: str
    seconds: float | None = None
    mb: float | None = None
    peak_mb: float | None = None
    lossless: bool | None = None
    note: str = ""


def measure(name: str, write: Writer, arr: np.ndarray, case: str, repeat: int) -> Row:
    row = Row(name, case)
    before = _rss_kb("VmRSS") if _reset_peak() else None
    out = write(arr)
    peak = _rss_kb("VmHWM")
    if before is not None and peak is not None:
        row.peak_mb = (peak - before) * 1024 / 1e6
    back = np.asarray(imagecodecs.png_decode(out))
    row.lossless = back.shape == arr.shape and back.dtype == arr.dtype and np.array_equal(back,
                                                                                          arr)
    row.mb = len(out) / 1e6
    del out, back
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        write(arr)
        times.append(time.perf_counter() - started)
    row.seconds = statistics.median(times)
    return row


def available(module: str | None) -> bool:
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - a broken optional install is "missing" here
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=3072)
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated subset of: " + ", ".join(CASES))
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.width}x{args.height}, median of {args.repeat}, load average {load:.2f} "
          f"at start, {os.cpu_count()} CPUs")
    arrays = images(args.width, args.height)
    rows: list[Row] = []
    for case in [c.strip() for c in args.cases.split(",")]:
        arr = arrays[case]
        print(f"\n{case} ({arr.nbytes / 1e6:.1f} MB raw)")
        print(f"| {'writer':<40} | seconds | MB    | peak MB | lossless |")
        print(f"|{'-' * 42}|---------|-------|---------|----------|")
        for name, write, module, cases in WRITERS:
            if case not in cases:
                continue
            if not available(module):
                rows.append(Row(name, case, note="not installed"))
                print(f"| {name:<40} | not installed |")
                continue
            row = measure(name, write, arr, case, args.repeat)
            rows.append(row)
            peak = "-" if row.peak_mb is None else f"{row.peak_mb:.0f}"
            print(f"| {name:<40} | {row.seconds:7.3f} | {row.mb:5.1f} | {peak:>7} | "
                  f"{'yes' if row.lossless else 'NO':<8} |", flush=True)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load_end:.2f} at the end")
    print("\nGoal: the fastest lossless writer. Chosen (what encode_image uses) against it:")
    for case in CASES:
        exact = {r.writer: r for r in rows if r.case == case and r.lossless
                 and r.seconds is not None and not r.writer.startswith("upscaler")}
        if not exact:
            continue
        best = min(exact.values(), key=lambda r: r.seconds or 0.0)
        chosen = exact.get(CHOSEN[case])
        said = "not measured" if chosen is None else \
            f"{chosen.seconds:.3f} s, {chosen.mb:.1f} MB"
        print(f"  {case}: chosen {CHOSEN[case]} ({said}); fastest {best.writer} "
              f"({best.seconds:.3f} s, {best.mb:.1f} MB)")
        if chosen is not None:
            report(f"encode: {case}, chosen writer / fastest lossless",
                   round(chosen.seconds / best.seconds, 2), 1.0, "<=", "x",
                   note=f"{CHOSEN[case]} {chosen.seconds:.3f} s, fastest {best.writer}")


if __name__ == "__main__":
    main()
