"""`make bench`: every bench in turn, then one table of every figure beside its goal.

    .venv/bin/python bench/run_all.py [--skip start flux ...]

Each bench prints its own detail as it runs; figures are collected through
``bench/figures.py``. The GPU benches report "not measured" on a machine without CUDA. Timing
benches want an otherwise idle machine (bench_flux waits for one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# name -> script and its arguments, in the order they run.
BENCHES = {
    "tiling": ["bench_tiling.py"],
    "request": ["bench_esrgan.py"],
    "fidelity": ["bench_fidelity.py"],
    "encode": ["bench_encode.py", "--repeat", "3"],
    "memory": ["bench_memory.py"],
    "decode-memory": ["bench_decode_memory.py"],
    "start": ["bench_start.py"],
    "flux": ["bench_flux.py"],
    "durable-load": ["bench_durable_load.py"],
    "gpu-rrdb": ["bench_gpu_rrdb.py"],
    "gpu-flux": ["bench_flux_gpu.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(BENCHES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        figures_file = Path(work) / "figures.jsonl"
        env = {**os.environ, "BENCH_FIGURES": str(figures_file)}
        failed = []
        for name, (script, *argv) in BENCHES.items():
            if name in args.skip:
                continue
            print(f"\n===== {name}: {script} {' '.join(argv)}", flush=True)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(BENCH / script), *argv], env=env,
                                  cwd=BENCH.parent)
            print(f"===== {name}: {time.perf_counter() - started:.0f} s, exit {done.returncode}")
            if done.returncode not in (0, 1):  # 1: ran, and a goal was not met
                failed.append(name)
        figures = [json.loads(line) for line in figures_file.read_text().splitlines()] \
            if figures_file.exists() else []
    print("\n| figure | value | goal | met | note |\n|---|---|---|---|---|")
    for f in figures:
        value = "not measured" if f["value"] is None else f"{f['value']:g}{f['unit']}"
        goal = "" if f["goal"] is None else f"{f['check']} {f['goal']:g}{f['unit']}"
        met = {True: "yes", False: "NO", None: "-"}[f["met"]]
        print(f"| {f['name']} | {value} | {goal} | {met} | {f['note']} |")
    if failed:
        print(f"\nbenches that did not run to the end: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
