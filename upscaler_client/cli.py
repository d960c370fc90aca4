"""`upscaler upscale | status | cancel | health`: the command line on the client (also
``python -m upscaler_client``, for a machine with only this package's light dependencies).

Exit codes (for scripts): see ``EXIT_CODES``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upscaler_client.cli_files import UsageError, collect_inputs, plan_outputs
from upscaler_client.cli_print import (
    FORMAT_CHOICES,
    add_print_flags,
    bleed_length,
    bleed_text,
    output_format,
    print_options,
)
from upscaler_client.client import AsyncClient, Client
from upscaler_client.errors import (
    ApiError,
    ConnectionFailed,
    JobFailed,
    ServerError,
    UpscalerClientError,
    WaitTimeout,
)
from upscaler_client.models import Job, ProgressUpdate
from upscaler_client.options import ENGINES, parse_pixels, parse_print_size

OK, JOB_FAILED, USAGE, API_REFUSED, UNAVAILABLE, INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = f"""exit codes:
  {OK}    done (every job completed; `health`: healthy)
  {JOB_FAILED}    a job failed or was cancelled
  {USAGE}    usage error (bad option, no such file)
  {API_REFUSED}    the API refused a request (4xx: bad input, unknown model, no or wrong key,
       quota still exceeded after the retries); its message is printed
  {UNAVAILABLE}    service unavailable: cannot connect, 5xx, 503 after the retries, wait timed out,
       `health`: degraded
  {INTERRUPTED}  interrupted (Ctrl-C): the jobs this run started and had not finished are cancelled
With several files the highest code of any file is the exit code."""


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, JobFailed):
        return JOB_FAILED
    if isinstance(exc, (ServerError, ConnectionFailed, WaitTimeout)):
        return UNAVAILABLE
    if isinstance(exc, ApiError):
        return UNAVAILABLE if exc.status_code >= 500 else API_REFUSED
    if isinstance(exc, (UsageError, ValueError, OSError)):
        return USAGE
    return UNAVAILABLE


def _print_size(text: str) -> tuple[float, float]:
    try:
        return parse_print_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pixels(text: str) -> tuple[int, int]:
    try:
        return parse_pixels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=VALUE, e.g. seam_fix=band_pass")
    return name.strip(), value


def upscale_options(args: argparse.Namespace) -> dict[str, Any]:
    fmt = output_format(args)
    options: dict[str, Any] = {
        "model": args.model, "upscale_factor": args.factor, "target_dpi": args.dpi,
        "print_size": args.print_size, "pixels": args.pixels, "output_format": fmt,
        "tile_size": args.tile_size, "denoise": args.denoise, "steps": args.steps,
        "prompt": args.prompt, "seed": args.seed,
        "crop_to_target": True if args.crop else None, "bleed": args.bleed,
        "use_fp16": False if args.no_fp16 else None, **print_options(args)}
    options.update(dict(args.field or []))
    return options


# --- output -----------------------------------------------------------------------------------

def _emit(args: argparse.Namespace, record: dict[str, Any], line: str) -> None:
    print(json.dumps(record) if args.json else line, flush=True)


def _error_record(exc: BaseException) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ApiError):
        rec.update(status=exc.status_code, code=exc.code, message=exc.message, job_id=exc.job_id)
    if isinstance(exc, JobFailed):
        rec.update(job_id=exc.job.id, code=exc.job.error_code, message=exc.job.error
                   or exc.job.status)
    return rec


def _fail(args: argparse.Namespace, what: str, exc: BaseException) -> int:
    if args.json:
        print(json.dumps({"input": what, "error": _error_record(exc)}), flush=True)
    msg = exc.message if isinstance(exc, ApiError) else str(exc)
    code = f"{exc.status_code} {exc.code}: " if isinstance(exc, ApiError) else ""
    print(f"upscaler: {what}: {code}{msg}", file=sys.stderr, flush=True)
    return exit_code_for(exc)


def _progress_display(args: argparse.Namespace):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[stage]}"), TimeElapsedColumn(), console=console,
                    disable=args.json or args.quiet or not console.is_terminal)


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"base_url": args.url, "api_key": args.api_key}


# --- commands ---------------------------------------------------------------------------------

@dataclass
class _Batch:
    started: dict[str, str]  # job ids this run started and has not seen end -> input


async def _upscale_all(args: argparse.Namespace, inputs: list[Path], outputs: list[Path],
                       batch: _Batch) -> int:
    options = upscale_options(args)
    gate = asyncio.Semaphore(max(1, args.concurrency))
    worst = OK
    with _progress_display(args) as progress:
        async with AsyncClient(**_client_kwargs(args)) as client:

            async def one(src: Path, dest: Path) -> int:
                task = progress.add_task(src.name, total=100, stage="waiting")
                log_stages = progress.disable and not (args.quiet or args.json)
                last_stage = [""]

                def update(u: ProgressUpdate) -> None:
                    if u.job is not None and u.job.status in ("queued", "processing"):
                        batch.started[u.job.id] = str(src)
                    if log_stages and u.stage != last_stage[0]:  # no terminal: a log line
                        last_stage[0] = u.stage
                        job = f" (job {u.job.id})" if u.job else ""
                        print(f"{src}: {u.message if u.stage == 'retrying' else u.stage}{job}",
                              file=sys.stderr, flush=True)
                    progress.update(task, completed=u.progress,
                                    stage=u.message if u.stage == "retrying" else u.stage)

                async with gate:
                    try:
                        if args.no_wait:
                            job = await client.submit(src, args.engine, on_progress=update,
                                                      **options)
                            _emit(args, {"input": str(src), "job": job.raw},
                                  f"{job.id}\t{src}")
                            return OK
                        result = await client.upscale(src, args.engine, output=dest,
                                                      on_progress=update, timeout=args.timeout,
                                                      **options)
                    except (UpscalerClientError, OSError) as exc:
                        progress.update(task, stage="[red]failed")
                        if isinstance(exc, JobFailed):
                            batch.started.pop(exc.job.id, None)
                        return _fail(args, str(src), exc)
                batch.started.pop(result.job.id, None)
                size = result.job.size()
                dpi = options.get("target_dpi")
                detail = f"{size[0]}x{size[1]} px" if size else ""
                quality = result.job.quality  # the fidelity summary (issue 23)
                _emit(args, {"input": str(src), "output": str(result.path),
                             "job": result.job.raw, "quality": result.job.raw.get("quality")},
                      f"{src} -> {result.path}  {detail}{f', {dpi} dpi' if dpi else ''}"
                      f"{bleed_text(args.bleed, result.job)}  (job {result.job.id})"
                      + (f"\n  fidelity: {quality.summary()}" if quality else ""))
                return OK

            jobs = (one(s, d) for s, d in zip(inputs, outputs, strict=True))
            worst = max([worst, *await asyncio.gather(*jobs)])
    return worst


def _cancel_started(args: argparse.Namespace, started: dict[str, str]) -> None:
    if not started:
        return
    with Client(**_client_kwargs(args), max_retries=0, timeout=5) as client:
        for job_id, src in list(started.items()):
            try:
                client.cancel(job_id)
                print(f"upscaler: cancelled job {job_id} ({src})", file=sys.stderr)
            except UpscalerClientError:
                pass


def cmd_upscale(args: argparse.Namespace) -> int:
    try:
        inputs = collect_inputs(args.inputs)
        outputs = plan_outputs(inputs, args.output, upscale_options(args)["output_format"])
    except UsageError as exc:
        print(f"upscaler upscale: {exc}", file=sys.stderr)
        return USAGE
    batch = _Batch({})
    try:
        return asyncio.run(_upscale_all(args, inputs, outputs, batch))
    except KeyboardInterrupt:
        if not args.no_wait:
            _cancel_started(args, batch.started)
        return INTERRUPTED


def _run_sync(args: argparse.Namespace, what: str, call: Callable[[Client], Any]) -> Any:
    with Client(**_client_kwargs(args)) as client:
        return call(client)


def _job_line(job: Job) -> str:
    extra = job.output_url or (f"{job.error_code}: {job.error}" if job.error else "")
    return f"{job.id}  {job.status:10s} {job.progress:3d}%  {extra}".rstrip()


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with Client(**_client_kwargs(args)) as client:
            job = client.status(args.job)
            if args.wait and not job.done:
                with _progress_display(args) as progress:
                    task = progress.add_task(args.job[:12], total=100, stage=job.status)
                    job = client.wait(job, timeout=args.timeout, on_progress=lambda u:
                                      progress.update(task, completed=u.progress,
                                                      stage=u.stage))
            if args.output is not None and job.status == "completed":
                client.download(job, args.output)
    except (UpscalerClientError, OSError) as exc:
        return _fail(args, args.job, exc)
    _emit(args, job.raw, _job_line(job))
    return JOB_FAILED if job.status in ("failed", "cancelled") else OK


def cmd_cancel(args: argparse.Namespace) -> int:
    try:
        job = _run_sync(args, args.job, lambda c: c.cancel(args.job))
    except UpscalerClientError as exc:
        return _fail(args, args.job, exc)
    _emit(args, job.raw, _job_line(job))
    return OK


def cmd_health(args: argparse.Namespace) -> int:
    try:
        body = _run_sync(args, "health", lambda c: c.health())
    except UpscalerClientError as exc:
        return _fail(args, "health", exc)
    lines = [f"{body.get('status')}"]
    if "gpu_available" in body:
        lines.append(f"gpu: {body.get('gpu_name') or 'none'}; engines up: "
                     f"{', '.join(body.get('models_loaded') or []) or 'none'}; "
                     f"queue: {body.get('queue_size')}")
    _emit(args, body, "\n".join(lines))
    return OK if body.get("status") == "healthy" else UNAVAILABLE


USAGE_LINES = (("megapixels_today", "megapixels computed today"),
               ("flux_megapixel_steps_today", "FLUX megapixel-steps today"),
               ("jobs_today", "jobs today"), ("open_jobs", "open jobs"),
               ("stored_bytes", "bytes of results kept"))


def cmd_usage(args: argparse.Namespace) -> int:
    try:
        body = _run_sync(args, "usage", lambda c: c.usage())
    except UpscalerClientError as exc:
        return _fail(args, "usage", exc)
    lines = [f"{label}: {body[name]['used']:g} of {body[name]['limit']:g}"
             for name, label in USAGE_LINES if name in body]
    lines.append(f"the day's counts start again in {body.get('resets_in_s')} s (00:00 UTC)")
    _emit(args, body, "\n".join(lines))
    return OK


# --- the parser ---------------------------------------------------------------------------------

def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the service (default: UPSCALER_URL, else "
                   "http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: UPSCALER_API_KEY); sent as "
                   "Authorization: Bearer")
    p.add_argument("--json", action="store_true",
                   help="JSON on stdout (one object per line for several jobs)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    up = sub.add_parser(
        "upscale", help="upscale images through a running service", formatter_class=fmt,
        description="Upscale one image, several, or the images of a folder through the "
        "service, with a progress bar per job.\n\n  upscaler upscale photo.jpg --model "
        "4x-UltraSharp --print 24x16in --dpi 300 -o out.tiff\n  upscaler upscale photos/ "
        "--factor 2 -o big/ --concurrency 4", epilog=EXIT_CODES)
    up.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                    help="image files or folders (their images, not recursive)")
    up.add_argument("-o", "--output", type=Path,
                    help="one input: the output file (or a folder); several: a folder (made "
                    "if missing) of <name>.<format>. Default: beside each input, "
                    "<name>.upscaled.<format>")
    up.add_argument("--engine", choices=ENGINES, default="esrgan")
    up.add_argument("--model", help="ESRGAN model (the pre-pass model for flux; the Vertex "
                    "model for imagen); default: the server's")
    size = up.add_argument_group("size (one of; default: --factor 4)")
    size.add_argument("--factor", help="scale, e.g. 2, 4, 2.5 (imagen: x2, x3, x4)")
    size.add_argument("--print", dest="print_size", type=_print_size, metavar="WxH",
                      help="print size: 24x16in, 30x40cm, 300x200mm, or A4, A3, letter...")
    size.add_argument("--pixels", type=_pixels, metavar="WxH",
                      help="target in pixels, e.g. 6000x4000")
    up.add_argument("--dpi", type=int, help="print DPI, written into the file (default 150)")
    up.add_argument("--crop", action="store_true",
                    help="crop (centred) to exactly the print size when the aspect differs")
    up.add_argument("--bleed", type=bleed_length, metavar="LENGTH",
                    help="bleed on every side of the print, e.g. 3mm or 0.125in (no unit: "
                    "inches): the output covers the print plus the bleed; needs --print or "
                    "--pixels")
    up.add_argument("--format", choices=FORMAT_CHOICES,
                    help="output format (default: from -o's extension, else png)")
    add_print_flags(up)
    up.add_argument("--tile-size", type=int, help="tile edge (esrgan: 0 = automatic)")
    up.add_argument("--no-fp16", action="store_true", help="esrgan: full precision on GPU")
    up.add_argument("--denoise", type=float, help="flux: img2img strength (0.2)")
    up.add_argument("--steps", type=int, help="flux: diffusion steps (20)")
    up.add_argument("--prompt", help="flux: optional text")
    up.add_argument("--seed", type=int, help="flux: seed (0)")
    up.add_argument("--field", action="append", type=_field, metavar="NAME=VALUE",
                    help="any other API field, e.g. --field seam_fix=band_pass (repeatable)")
    up.add_argument("--concurrency", type=int, default=2,
                    help="jobs at once (default 2)")
    up.add_argument("--no-wait", action="store_true",
                    help="submit and print the job ids (one per line: id, tab, input)")
    up.add_argument("--timeout", type=float, help="seconds to wait for each job")
    _connection(up)
    up.set_defaults(func=cmd_upscale)

    st = sub.add_parser("status", help="a job's status (or wait for it)", formatter_class=fmt,
                        epilog=EXIT_CODES)
    st.add_argument("job", help="the job id (jobId)")
    st.add_argument("--wait", action="store_true", help="until the job ends, with progress")
    st.add_argument("--timeout", type=float, help="seconds to wait")
    st.add_argument("-o", "--output", type=Path, help="download the result here when completed")
    _connection(st)
    st.set_defaults(func=cmd_status)

    ca = sub.add_parser("cancel", help="cancel a queued or running job", formatter_class=fmt,
                        epilog=EXIT_CODES)
    ca.add_argument("job", help="the job id")
    _connection(ca)
    ca.set_defaults(func=cmd_cancel)

    he = sub.add_parser("health", help="is the service up (exit 0) or degraded (exit 4)",
                        formatter_class=fmt, epilog=EXIT_CODES)
    _connection(he)
    he.set_defaults(func=cmd_health)

    us = sub.add_parser("usage", help="this key's usage today and its limits",
                        formatter_class=fmt, epilog=EXIT_CODES)
    _connection(us)
    us.set_defaults(func=cmd_usage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m upscaler_client", description=__doc__,
                                     epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
