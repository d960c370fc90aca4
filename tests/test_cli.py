"""`upscaler upscale | status | cancel | health` (the command line on the client): --help of
every subcommand, output naming and an unreachable service (fast); against the running
service (slow): one file at a print size, a folder of three, a 4xx, --no-wait then cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.api import eventually
from helpers.images import photo
from helpers.processes import REPO, free_port
from PIL import Image

from upscaler.commands.cli import main
from upscaler_client import Client
from upscaler_client.cli import API_REFUSED, JOB_FAILED, OK, UNAVAILABLE
from upscaler_client.cli_files import plan_outputs

# A FLUX job (the tiny test FLUX) that runs for a while on the FLUX replicas and stops at its
# next step when cancelled: the ESRGAN replica the other tests use stays free.
LONG_FLUX = ("--engine", "flux", "--model", "tiny-rrdb", "--factor", "2", "--steps", "100",
             "--denoise", "0.5", "--tile-size", "64", "--field", "tile_padding=16",
             "--field", "mask_blur=4")


def cli(capsys, monkeypatch, service, *args: str) -> tuple[int, str, str]:
    """The command in this process (no interpreter start-up): exit code, stdout, stderr."""
    monkeypatch.setenv("UPSCALER_URL", service.url)
    monkeypatch.setenv("UPSCALER_API_KEY", service.api_key)
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*args: str, service=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `upscaler` command as a user runs it, pointed at ``service`` by the environment."""
    env = {**os.environ}
    if service is not None:
        env.update(UPSCALER_URL=service.url, UPSCALER_API_KEY=service.api_key)
    return subprocess.run([sys.executable, "-m", "upscaler.commands.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [[], ["upscale"], ["status"], ["cancel"], ["health"]])
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "130" in out
    if command == ["upscale"]:
        for flag in ("--print", "--dpi", "--factor", "--concurrency", "--no-wait", "--json",
                     "--denoise", "--steps", "--tile-size", "--format", "--crop"):
            assert flag in out


def test_usage_errors_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["upscale", "x.png", "--print", "24 by 16"])
    assert done.value.code == 2 and "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.png")]) == 2


def test_output_names(tmp_path):
    a, b, c = tmp_path / "a.jpg", tmp_path / "sub" / "a.png", tmp_path / "b.png"
    assert plan_outputs([a], tmp_path / "out.tiff", "tiff") == [tmp_path / "out.tiff"]
    assert plan_outputs([a], None, None) == [tmp_path / "a.upscaled.png"]
    out = tmp_path / "out"
    assert plan_outputs([a, b, c], out, "tiff") == [out / "a.tiff", out / "a-2.tiff",
                                                     out / "b.tiff"]
    assert out.is_dir()


def test_unreachable_service_exits_4():
    url = f"http://127.0.0.1:{free_port()}"
    r = run_cli("health", "--url", url, timeout=60)
    assert r.returncode == UNAVAILABLE and "ConnectError" in r.stderr


# --- against the running service ------------------------------------------------------------

def _image(path: Path, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo("astronaut", size).save(path)
    return path


@pytest.mark.slow
def test_one_file_to_a_print_size(service, tmp_path):
    src = _image(tmp_path / "photo.jpg")
    out = tmp_path / "print.tiff"
    r = run_cli("upscale", str(src), "--model", "tiny-compact", "--print", "4x3in", "--dpi",
                "100", "-o", str(out), "--json", service=service)
    assert r.returncode == OK, r.stderr
    record = json.loads(r.stdout)
    assert record["output"] == str(out) and record["job"]["status"] == "completed"
    assert record["quality"] == record["job"]["quality"] and record["quality"]["delta_e_p95"] >= 0
    with Image.open(out) as im:
        assert im.format == "TIFF" and im.size == (400, 300)
        assert round(float(im.info["dpi"][0])) == 100


@pytest.mark.slow
def test_a_folder_of_three(service, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    for name in ("a.png", "b.jpg", "c.png"):
        _image(folder / name, (40, 30))
    code, out, err = cli(capsys, monkeypatch, service, "upscale", str(folder), "--model",
                         "tiny-compact", "--factor", "2", "-o", str(tmp_path / "out"),
                         "--concurrency", "2")
    assert code == OK, err
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["a.png", "b.png", "c.png"]
    for name in outputs:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.size == (80, 60)
    assert out.count("(job ") == 3
    assert out.count("\n  fidelity: dE2000 ") == 3  # one summary line per image
    assert err.count(": completed (job ") == 3  # no terminal: each stage is a log line


@pytest.mark.slow
def test_api_refusal_exits_3_with_its_message(service, tmp_path, capsys, monkeypatch):
    src = _image(tmp_path / "photo.png")
    code, _, err = cli(capsys, monkeypatch, service, "upscale", str(src), "--model",
                       "no-such-model")
    assert code == API_REFUSED
    assert "422 unknown_model" in err and "no-such-model" in err
    code, _, err = cli(capsys, monkeypatch, service, "status", "f" * 32, "--api-key", "wrong")
    assert code == API_REFUSED and "401" in err


@pytest.mark.slow
def test_no_wait_then_cancel_and_status(service, tmp_path, capsys, monkeypatch):
    src = _image(tmp_path / "big.png", (128, 128))
    code, out, err = cli(capsys, monkeypatch, service, "upscale", str(src), *LONG_FLUX,
                         "--no-wait")
    assert code == OK, err
    job_id, name = out.strip().split("\t")
    assert name == str(src) and len(job_id) == 32
    with Client(service.url, service.api_key) as client:  # cancelled once it runs
        eventually(lambda: client.status(job_id).status == "processing", timeout=120)
    code, out, err = cli(capsys, monkeypatch, service, "cancel", job_id)
    assert code == OK, err
    code, out, _ = cli(capsys, monkeypatch, service, "status", job_id, "--wait", "--json")
    assert code == JOB_FAILED and json.loads(out)["status"] == "cancelled"
    code, out, err = cli(capsys, monkeypatch, service, "cancel", job_id)  # deletes its result
    assert code == OK and "cancelled" in out, err
    code, out, _ = cli(capsys, monkeypatch, service, "health", "--json")
    assert code == OK and json.loads(out)["status"] == "healthy"


@pytest.mark.slow
def test_interrupt_cancels_the_running_job_and_exits_130(service, tmp_path):
    src = _image(tmp_path / "slow.png", (128, 128))
    env = {**os.environ, "UPSCALER_URL": service.url, "UPSCALER_API_KEY": service.api_key}
    # A run in the background (`pytest &`) ignores SIGINT, and a child would inherit that:
    # the CLI starts with SIGINT as a terminal's Ctrl-C finds it.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "upscaler.commands.cli", "upscale", str(src),
                                 *LONG_FLUX], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited if inherited is not None else signal.SIG_DFL)
    job_id = None
    for line in proc.stderr:  # without a terminal, each stage is a log line
        if ": processing (job " in line:
            job_id = line.rsplit("(job ", 1)[1].rstrip(")\n")
            break
    assert job_id, "the job never ran"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"cancelled job {job_id}" in err
    with Client(service.url, service.api_key) as client:
        assert client.status(job_id).status == "cancelled"
