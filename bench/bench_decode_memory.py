"""Memory of the check decode every upload gets (``streamed_decode.check_decodes``), per
format.

    .venv/bin/python bench/bench_decode_memory.py [--side 2000] [--repeat 1]

Each case is encoded first (a side x side picture), then decoded in a process of its own:
the figure is how far the process's peak RSS rose over its RSS just before the decode, per
pixel (Linux: ``/proc/self/clear_refs`` resets the peak, so imports and the encoded bytes are
not counted), as in a decode worker (``upscaler.compute.decode_worker``: glibc's own malloc
settings). ``upscaler/compute/memory.py``'s DECODE_BYTES_PER_PIXEL is this table with some room;
the bench fails
(exit 1) if a measured case is over its budget. ``--pin-mmap`` maps every buffer of 1 MiB or
more on its own (``upscaler.compute.memory.return_big_buffers``, as the ESRGAN replicas do).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from figures import report  # noqa: E402

# Each is built by ``encode`` below: format, then colour kind and bit depth.
CASES = ["png-rgb8", "png-rgba8", "png-gray8", "png-rgb16", "png-rgba16", "png-gray16",
         "png-palette", "png-palette-alpha", "png-gray-alpha", "jpeg-rgb", "jpeg-gray",
         "jpeg-cmyk", "webp-rgb", "webp-rgba", "tiff-rgb8", "tiff-rgba8", "tiff-rgb16",
         "tiff-rgba16", "bmp-rgb", "gif"]


def encode(case: str, side: int) -> bytes:
    import imagecodecs
    import numpy as np
    import tifffile
    from PIL import Image

    # A smooth picture with some grain (the decode's memory does not depend on content).
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    grain = np.random.default_rng(0).normal(0, 8, (side, side, 3)).astype(np.float32)
    rgb = np.clip(np.dstack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                             (ramp[None, :] + ramp[:, None]) / 2]) + grain, 0, 255
                  ).astype(np.uint8)
    alpha = np.linspace(0, 255, side * side, dtype=np.float64).reshape(side, side)
    rgba = np.dstack([rgb, alpha.astype(np.uint8)])
    wide_rgb = rgb.astype(np.uint16) * 257
    wide_rgba = rgba.astype(np.uint16) * 257
    if case == "png-rgb16":
        return imagecodecs.png_encode(wide_rgb, level=1)
    if case == "png-rgba16":
        return imagecodecs.png_encode(wide_rgba, level=1)
    if case == "png-gray16":
        return imagecodecs.png_encode(np.ascontiguousarray(wide_rgb[..., 0]), level=1)
    if case in ("tiff-rgb16", "tiff-rgba16", "tiff-rgb8", "tiff-rgba8"):
        arr = {"tiff-rgb16": wide_rgb, "tiff-rgba16": wide_rgba, "tiff-rgb8": rgb,
               "tiff-rgba8": rgba}[case]
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="rgb", compression="zlib",
                         extrasamples=[2] if arr.shape[-1] == 4 else None)
        return buf.getvalue()
    im = Image.fromarray(rgba if case in ("png-rgba8", "webp-rgba") else rgb)
    fmt, options = case.split("-")[0].upper(), {}
    if case.endswith("gray") or case == "png-gray8":
        im = im.convert("L")
    elif case == "jpeg-cmyk":
        im = im.convert("CMYK")
    elif case == "png-gray-alpha":
        im = Image.fromarray(rgba).convert("LA")
    elif case in ("png-palette", "png-palette-alpha", "gif"):
        im = im.convert("P", palette=Image.ADAPTIVE)
    if fmt == "PNG":
        options = {"compress_level": 1}
    if case == "png-palette-alpha":
        options["transparency"] = 0  # one palette entry transparent: decoded as RGBA
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: Path, pin: bool) -> dict:
    """Runs in a fresh process: one check decode of the file, and how far the peak RSS rose
    (the file was encoded elsewhere: memory its encoding freed is not here to be reused)."""
    import time

    import imagecodecs  # noqa: F401 - imported by the 16-bit path: not the decode's memory
    import tifffile  # noqa: F401

    from upscaler.compute.images import probe_image
    from upscaler.compute.memory import return_big_buffers, trim_heap
    from upscaler.compute.streamed_decode import check_decodes

    if pin:
        return_big_buffers()
    data = path.read_bytes()
    probe = probe_image(data, 10**9)
    trim_heap()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts from now
    base = _rss_kb("VmRSS")
    started = time.perf_counter()
    check_decodes(data, 10**9)
    seconds = time.perf_counter() - started
    peak = _rss_kb("VmHWM")
    return {"format": probe.format, "mode": probe.mode, "bit_depth": probe.bit_depth,
            "alpha": probe.has_alpha, "seconds": seconds, "encoded_bytes": len(data),
            "bytes_per_pixel": (peak - base) * 1024 / (probe.width * probe.height)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the highest)")
    parser.add_argument("--cases", nargs="*", default=CASES, choices=CASES)
    parser.add_argument("--pin-mmap", action="store_true",
                        help="mmap every buffer of 1 MiB or more (return_big_buffers)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), args.pin_mmap)))
        return 0
    import tempfile

    from upscaler.compute.images import ImageProbe
    from upscaler.compute.memory import decode_bytes_per_pixel

    print(f"check decode of a {args.side}x{args.side} image: peak RSS rise per pixel\n"
          "| case | format | mode | bits | alpha | measured B/px | budget B/px | s |\n"
          "|---|---|---|---|---|---|---|---|")
    over = []
    for case in args.cases:
        with tempfile.NamedTemporaryFile(suffix=f".{case}") as f:
            f.write(encode(case, args.side))
            f.flush()
            runs = [json.loads(subprocess.run(
                [sys.executable, __file__, "--child", f.name,
                 *(["--pin-mmap"] if args.pin_mmap else [])], cwd=ROOT,
                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                for _ in range(args.repeat)]
        m = max(runs, key=lambda r: r["bytes_per_pixel"])
        budget = decode_bytes_per_pixel(ImageProbe(m["format"], args.side, args.side,
                                                   m["mode"], m["bit_depth"], m["alpha"]))
        if m["bytes_per_pixel"] > budget:
            over.append(case)
        print(f"| {case} | {m['format']} | {m['mode']} | {m['bit_depth']} | "
              f"{'yes' if m['alpha'] else 'no'} | {m['bytes_per_pixel']:.1f} | {budget} | "
              f"{m['seconds']:.2f} |", flush=True)
    met = report("decode memory: cases over their budget", len(over), 0,
                 note=", ".join(over) or f"{len(args.cases)} cases at {args.side}x{args.side}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
