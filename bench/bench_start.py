"""Start-up: `upscaler serve` to its first healthy answer, against a bare Ray Serve app (a
FastAPI ingress and one torch deployment) started the same way on this machine, in the same run.

    .venv/bin/python bench/bench_start.py [--rounds 2]

Both run on 127.0.0.1 without the dashboard, from a fresh process each time; the figure is the
median over the rounds, and the goal is upscaler <= 1.5x the bare app.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from figures import report  # noqa: E402
from helpers.model_factory import write_compact  # noqa: E402
from helpers.processes import free_port  # noqa: E402

GOAL = 1.5
BARE_APP = '''
import sys, time
import ray
from fastapi import FastAPI
from ray import serve

app = FastAPI()

@serve.deployment
class Model:
    def __init__(self):
        import torch
        self.net = torch.nn.Conv2d(3, 3, 3)

    def __call__(self) -> str:
        return "ok"

@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, model):
        self.model = model

    @app.get("/health")
    async def health(self) -> str:
        return await self.model.remote()

ray.init(address="local", include_dashboard=False, logging_level="WARNING")
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(Ingress.bind(Model.bind()), route_prefix="/")
while True:
    time.sleep(1)
'''


def time_to_first_ok(cmd: list[str], url: str, env: dict, healthy) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited")
            try:
                r = httpx.get(url, timeout=2)
                if r.status_code == 200 and healthy(r):
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upscaler-start-"))
    models = work / "models" / "upscale_models"
    models.mkdir(parents=True)
    write_compact(models / "tiny-compact.pth")
    (work / "bare.py").write_text(BARE_APP)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    bare, ours = [], []
    for _ in range(args.rounds):
        port = free_port()
        bare.append(time_to_first_ok([sys.executable, str(work / "bare.py"), str(port)],
                                     f"http://127.0.0.1:{port}/health", env, lambda r: True))
        port = free_port()
        ours.append(time_to_first_ok(
            [sys.executable, "-m", "upscaler.commands.cli", "serve", "--no-dashboard", "--port",
             str(port), "--data-dir", str(work / "data"), "--models-dir", str(work / "models")],
            f"http://127.0.0.1:{port}/api/health", env,
            lambda r: r.json().get("status") == "healthy"))
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"bare Ray Serve app, first 200      {b:.1f} s  (rounds: "
          f"{', '.join(f'{t:.1f}' for t in bare)})")
    print(f"upscaler serve, first healthy      {o:.1f} s  (rounds: "
          f"{', '.join(f'{t:.1f}' for t in ours)})")
    met = report("start: upscaler serve / bare Ray Serve app, to first healthy answer",
                 round(o / b, 2), GOAL, "<=", "x", note=f"{o:.1f} s vs {b:.1f} s")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
