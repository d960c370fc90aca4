"""Memory of ESRGAN jobs from 100 MP to 1.5 GP outputs, and of serving their results.

    .venv/bin/python bench/bench_memory.py                    # 100 MP, 500 MP, 1.5 GP, PNG
    .venv/bin/python bench/bench_memory.py --sizes 100 --format tiff

Each job runs in a process of its own, as an ESRGAN replica runs it: the upload copied from
job storage to the scratch folder and decoded strip by strip into an on-disk canvas (or, below
16 MP, in memory as integers), upscaled tile by tile into another canvas, its fidelity report
measured, written to a file strip by strip (PNG by rows, TIFF by tiles), uploaded to job
storage from the file. The model is an SRVGG compact x4 in the real file layout with very
few features (random weights: 4 features, 1 convolution by default) so 1.5 GP runs in
minutes on a CPU;
the production loader and the CPU tile of the default settings. Inputs are scikit-image's
astronaut, enlarged, square, so a x4 output hits each size. Figures: the job process's peak
RSS (all of it: Python, torch, the model, the job), the rise above its RSS just before the
job, and seconds per output megapixel; then the Ingress's check decode of the upload (in a
process of its own, as a decode worker runs it) and the Ingress serving the result (a process
running the real app under uvicorn, downloaded whole and a second time from its middle with
a Range): its peak RSS. The output is checked at sampled tiles (the file decoded there as a
stream) against the model run on each tile's own input alone. Goals: the peak <= 2 GB at
1.5 GP and within 20 % across the sizes; time per megapixel within 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from figures import report  # noqa: E402

SIZES_MP = (100, 500, 1500)
PEAK_GOAL_GB, FLAT_GOAL, TIME_FLAT_GOAL = 2.0, 0.20, 0.10
MODEL = "nano"
RESULT_NAME = "0123456789abcdef0123456789abcdef"  # a job id's shape, for the results route


def _hwm_kb() -> int:
    """This process's peak RSS since its exec (getrusage's ru_maxrss would also count the
    parent's pages at the fork that started it)."""
    return _status_kb(os.getpid(), "VmHWM")


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _settings(folder: Path):
    from upscaler.settings import Settings

    return Settings(device="cpu", data_dir=folder, models_dir=folder / "models",
                    max_input_pixels=400_000_000, max_output_pixels=2_000_000_000,
                    scratch_dir=folder / "scratch")


def job(folder: Path, fmt: str, factor: float) -> dict:
    """Runs in the child: one job as the replica runs it, timed, with its RSS."""
    from deployments.common import read_input_by_strips
    from deployments.esrgan import esrgan_engine
    from deployments.quality import esrgan_fidelity, measure_quality
    from upscaler.compute.canvas_file import scratch_folder
    from upscaler.compute.dimensions import calculate_output_dimensions
    from upscaler.compute.engines.models import ModelRegistry
    from upscaler.compute.writers import write_output
    from upscaler.domain.storage import Storage

    settings = _settings(folder)
    engine = esrgan_engine(settings, ModelRegistry(settings.upscale_models_dir))
    engine.load(MODEL, True)
    storage = Storage(settings.resolved_storage_url)
    before = _rss_kb()
    started = time.perf_counter()
    with scratch_folder(settings.resolved_scratch_dir) as scratch:
        # As the replica reads it: copied to the scratch folder, decoded by strips.
        image = read_input_by_strips(storage, "inputs/upload.png", settings.max_input_pixels,
                                     scratch)
        decoded = time.perf_counter()
        plan = calculate_output_dimensions(image.width, image.height, factor)
        result = engine.upscale(image, MODEL, plan, canvas_dir=scratch)
        upscaled = time.perf_counter()
        out = result.image
        quality, _ = measure_quality("esrgan", esrgan_fidelity(image, result.stats, out.height,
                                                               out.width), out)
        measured = time.perf_counter()
        path = scratch / f"{RESULT_NAME}.{fmt}"
        size = write_output(out, fmt, path, plan.dpi, settings.png_compress_level,
                            settings.tiff_compression, settings.png_encoder)
        written = time.perf_counter()
        storage.write_file(f"results/{RESULT_NAME}.{fmt}", path)
        out.close()
    done = time.perf_counter()
    return {"peak_kb": _hwm_kb(), "before_kb": before, "output": [plan.output_width,
            plan.output_height], "file_bytes": size, "tile": result.stats["tile_size"],
            "input_on_disk": type(image.rgb).__name__ == "Canvas",
            "delta_e_mean": quality and quality.delta_e_mean,
            "seconds": {"decode": decoded - started, "engine": upscaled - decoded,
                        "quality": measured - upscaled, "write": written - measured,
                        "store": done - written, "total": done - started}}


def check(upload: Path) -> dict:
    """Runs in the child: the Ingress's check decode of the upload (as a decode worker runs
    it, the upload's bytes in memory), with its RSS."""
    import imagecodecs  # noqa: F401 - a worker imports these before it says it is ready
    import tifffile  # noqa: F401

    from upscaler.compute.streamed_decode import check_decodes

    data = upload.read_bytes()
    before = _rss_kb()
    started = time.perf_counter()
    check_decodes(data, 400_000_000)
    return {"peak_kb": _hwm_kb(), "before_kb": before,
            "upload_bytes": len(data), "seconds": time.perf_counter() - started}


def ingress(folder: Path, port: int) -> None:
    """Runs in the child: the real app (keys off) under uvicorn, results from ``folder``."""
    from collections import defaultdict

    import uvicorn

    from serve_app.api import create_app
    from serve_app.ingress import build_services

    class Unused:  # the results route calls no deployment
        def __getattr__(self, name: str):
            return self

        def __call__(self, *args, **kwargs):
            return self

    app = create_app(build_services(_settings(folder), defaultdict(Unused)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def serve_and_download(folder: Path, fmt: str, size: int) -> dict:
    """The Ingress process's RSS while the result is downloaded whole, then from its middle."""
    from helpers.processes import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--ingress", str(folder), "--port",
                             str(port)], cwd=ROOT)
    url = f"http://localhost:{port}/api/results/{RESULT_NAME}.{fmt}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://localhost:{port}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        idle = _status_kb(proc.pid, "VmRSS")
        got, t0 = 0, time.perf_counter()
        for headers in ({}, {"Range": f"bytes={size // 2}-"}):
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
                while chunk := r.read(1 << 20):
                    got += len(chunk)
        seconds = time.perf_counter() - t0
        assert got == size + size - size // 2, (got, size)
        return {"idle_kb": idle, "peak_kb": _status_kb(proc.pid, "VmHWM"),
                "mb_per_s": got / 1e6 / seconds}
    finally:
        proc.terminate()
        proc.wait(30)


def check_samples(folder: Path, fmt: str, upload: Path, count: int = 6) -> int:
    """Sampled 128 px tiles of the written file against the model run on their input alone;
    returns how many were checked (an AssertionError names one that differs)."""
    import numpy as np
    from helpers.sampled import model_region, png_rows, tiff_region
    from PIL import Image

    from upscaler.compute.engines.esrgan import EsrganEngine
    from upscaler.compute.engines.models import ModelRegistry
    from upscaler.compute.images import decode_image
    from upscaler.compute.png import WHOLE_IMAGE_MAX_PIXELS

    settings = _settings(folder)
    engine = EsrganEngine(ModelRegistry(settings.upscale_models_dir), device="cpu")
    image = decode_image(upload.read_bytes(), settings.max_input_pixels, integers=True)
    path = folder / "storage" / "results" / f"{RESULT_NAME}.{fmt}"
    out_h, out_w = image.height * 4, image.width * 4
    rng = np.random.default_rng(0)
    spots = [(0, 0), (out_h - 128, out_w - 128)] + [
        (int(y) * 4, int(x) * 4) for y, x in rng.integers(0, [image.height - 32,
                                                                image.width - 32], (count, 2))]
    if fmt == "png" and out_h * out_w <= WHOLE_IMAGE_MAX_PIXELS:  # fpng's filters: whole
        rows = dict(enumerate(np.asarray(Image.open(path).convert("RGB"))))
    elif fmt == "png":
        wanted = {y for y0, _ in spots for y in range(y0, y0 + 128)}
        rows = {y: row for y, row in png_rows(path) if y in wanted}
    for y0, x0 in spots:
        expected = model_region(engine, image, MODEL, 4, 40, y0, y0 + 128, x0, x0 + 128)
        got = tiff_region(path, y0, y0 + 128, x0, x0 + 128) if fmt == "tiff" else np.stack(
            [rows[y][x0:x0 + 128] for y in range(y0, y0 + 128)])
        assert np.array_equal(got, expected), f"the tile at ({y0}, {x0}) differs"
    return len(spots)


def run_size(megapixels: int, fmt: str, feat: int, convs: int, factor: float) -> dict:
    from helpers.images import photo
    from helpers.model_factory import write_compact

    side = int((megapixels * 1e6 / factor**2) ** 0.5)
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=os.environ.get("TMPDIR")))
    try:
        models = folder / "models" / "upscale_models"
        models.mkdir(parents=True)
        write_compact(models / f"{MODEL}.pth", num_feat=feat, num_conv=convs)
        upload = folder / "storage" / "inputs" / "upload.png"
        upload.parent.mkdir(parents=True)
        photo("astronaut", (side, side)).save(upload, compress_level=1)
        out = subprocess.run([sys.executable, __file__, "--job", str(folder), "--format", fmt,
                              "--factor", str(factor)],
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        out = subprocess.run([sys.executable, __file__, "--check", str(upload)], cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        measured["checked"] = json.loads(out.stdout.strip().splitlines()[-1])
        measured["served"] = serve_and_download(folder, fmt, measured["file_bytes"])
        shutil.rmtree(folder / "scratch", ignore_errors=True)
        # Sampled tiles are checked where the model's size is the output's (another factor:
        # tests/test_gigapixel.py checks the band resample against the whole-image one).
        measured["checked_tiles"] = check_samples(folder, fmt, upload) if factor == 4 else 0
        measured["factor"] = factor
        measured["side"] = side
        return measured
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES_MP)),
                        help="output megapixels, comma-separated")
    parser.add_argument("--format", default="png", choices=("png", "tiff"))
    parser.add_argument("--feat", type=int, default=4)
    parser.add_argument("--convs", type=int, default=1)
    parser.add_argument("--factor", type=float, default=4,
                        help="output / input (another than 4: the model's x4, resampled)")
    parser.add_argument("--rows", help="a file the measured sizes are added to; the table "
                        "covers every size in it (--sizes '' prints it alone)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--ingress", help=argparse.SUPPRESS)
    parser.add_argument("--check", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(job(Path(args.job), args.format, args.factor)))
        return 0
    if args.ingress:
        ingress(Path(args.ingress), args.port)
        return 0
    if args.check:
        print(json.dumps(check(Path(args.check))))
        return 0
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()] \
        if args.rows and Path(args.rows).exists() else []
    for mp in map(int, filter(None, args.sizes.split(","))):
        m = run_size(mp, args.format, args.feat, args.convs, args.factor)
        w, h = m["output"]
        m["mp"] = w * h / 1e6
        rows.append(m)
        print(json.dumps(m), flush=True)
        if args.rows:  # sizes may be run one at a time (each a short run) into one table
            with open(args.rows, "a") as f:
                f.write(json.dumps(m) + "\n")
    rows.sort(key=lambda m: (m.get("factor", 4), m["mp"]))
    print(f"\nSRVGG compact x4 ({args.feat} features, {args.convs} conv), CPU tile "
          f"{rows[0]['tile']}, {args.format.upper()}\n")
    print("| output | input | job peak RSS | rise in the job | s / output MP (decode + engine "
          "+ fidelity + write + store) | file | Ingress: check decode peak RSS (upload) | "
          "Ingress peak RSS (serving it twice) | tiles checked |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in rows:
        s = m["seconds"]
        c = m["checked"]
        print(f"| {m['output'][0]}x{m['output'][1]} ({m['mp']:.0f} MP, x{m.get('factor', 4):g})"
              f" | {m['side']}x"
              f"{m['side']} | {m['peak_kb'] / 1e6:.2f} GB | "
              f"{(m['peak_kb'] - m['before_kb']) / 1e6:.2f} GB | {s['total'] / m['mp']:.3f} "
              f"({s['decode'] / m['mp']:.3f} + {s['engine'] / m['mp']:.3f} + "
              f"{s['quality'] / m['mp']:.3f} + "
              f"{s['write'] / m['mp']:.3f} + {s['store'] / m['mp']:.3f}) | "
              f"{m['file_bytes'] / 1e9:.2f} GB | {c['peak_kb'] / 1e6:.2f} GB "
              f"({c['upload_bytes'] / 1e6:.0f} MB) | {m['served']['peak_kb'] / 1e6:.2f} GB "
              f"({m['served']['mb_per_s']:.0f} MB/s) | {m['checked_tiles']} |")
    exact = [m for m in rows if m.get("factor", 4) == 4] or rows  # the goals' rows
    peaks = [m["peak_kb"] for m in exact]
    per_mp = [m["seconds"]["total"] / m["mp"] for m in exact]
    served = [m["served"]["peak_kb"] for m in exact]
    checks = [m["checked"]["peak_kb"] for m in exact]
    met = [report("memory: job peak RSS at the largest output", peaks[-1] / 1e6,
                  PEAK_GOAL_GB, unit=" GB", note=f"{exact[-1]['mp']:.0f} MP"),
           report("memory: job peak RSS spread across output sizes",
                  round(max(peaks) / min(peaks) - 1, 3), FLAT_GOAL),
           # Uploads under 16 MP are checked in memory (within the decode budget), bigger
           # ones by strips: what matters is that the largest costs no more than the smallest.
           report("memory: Ingress check decode peak RSS, largest upload over smallest",
                  round(checks[-1] / checks[0] - 1, 3), FLAT_GOAL),
           report("memory: Ingress peak RSS spread serving the results",
                  round(max(served) / min(served) - 1, 3), FLAT_GOAL),
           report("time per output MP spread across output sizes",
                  round(max(per_mp) / min(per_mp) - 1, 3), TIME_FLAT_GOAL)]
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
