"""The `upscaler` command: `serve` runs the service in the foreground; `models` manages weights."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from serve_app.settings import load_settings


def _settings_from(args: argparse.Namespace):
    return load_settings({
        "data_dir": getattr(args, "data_dir", None),
        "models_dir": getattr(args, "models_dir", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    })


def cmd_serve(args: argparse.Namespace) -> int:
    # Local-cluster defaults (each can be overridden by the environment).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = _settings_from(args)

    import ray
    from ray import serve

    from serve_app.app import build_graph

    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        print(f"\nupscaler: got {signal.Signals(signum).name}, shutting down ...", flush=True)
        stop.set()

    # address="local": always a new cluster of our own, never one a `ray start` left behind.
    init_kwargs: dict = {"address": "local", "include_dashboard": not args.no_dashboard,
                         "dashboard_host": args.dashboard_host or settings.dashboard_host,
                         "logging_level": "WARNING"}
    if args.metrics_port or settings.metrics_port:
        init_kwargs["_metrics_export_port"] = args.metrics_port or settings.metrics_port
    if args.ray_address:
        init_kwargs = {"address": args.ray_address}
    elif args.dashboard_port:
        init_kwargs["dashboard_port"] = args.dashboard_port
    ray.init(**init_kwargs)
    # After ray.init: Ray installs its own SIGTERM handler, which aborts the process.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_graph(settings), name="upscaler", route_prefix="/")
        base = f"http://{settings.host}:{settings.port}"
        dashboard = ray.get_runtime_context().dashboard_url if not args.no_dashboard else None
        print(f"upscaler is up\n  API:       {base}/api\n  Docs:      {base}/docs", flush=True)
        if dashboard:
            print(f"  Dashboard: http://{dashboard}", flush=True)
        metrics_port = args.metrics_port or settings.metrics_port
        if metrics_port:
            print(f"  Metrics:   http://127.0.0.1:{metrics_port}/metrics", flush=True)
        print(f"  Models:    {settings.upscale_models_dir}\n"
              f"  Storage:   {settings.resolved_storage_url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print("upscaler: stopped", flush=True)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from engines.models import ModelRegistry
    from serve_app.model_pull import CATALOG

    settings = _settings_from(args)
    registry = ModelRegistry(settings.upscale_models_dir)
    infos, errors = registry.list_info()
    print(f"models in {settings.upscale_models_dir}:")
    for info in infos:
        print(f"  {info.name:28s} {info.architecture:10s} x{info.scale}  "
              f"{info.size_bytes / 1e6:7.1f} MB")
    for name, err in errors.items():
        print(f"  {name:28s} NOT LOADABLE: {err}")
    if not infos and not errors:
        print("  (none) - run `upscaler models pull default`")
    missing = [n for n, e in CATALOG.items()
               if e.subfolder == "upscale_models" and n not in registry.names()]
    if missing:
        print("available to pull: " + ", ".join(missing))
    from engines.flux import FluxFiles

    flux_missing = FluxFiles(settings.resolved_models_dir).missing()
    if flux_missing:
        print(f"FLUX: missing {len(flux_missing)} files - run `upscaler models pull flux`")
    else:
        print("FLUX: installed")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from serve_app.model_pull import PullError, pull

    settings = _settings_from(args)
    try:
        pull(args.names, settings, force=args.force)
    except PullError as exc:
        print(f"upscaler models pull: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upscaler", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, help="default: ./data (UPSCALER_DATA_DIR)")
        p.add_argument("--models-dir", type=Path, help="default: DATA_DIR/models")

    serve_p = sub.add_parser("serve", help="run the service in the foreground")
    common(serve_p)
    serve_p.add_argument("--host", help="default 127.0.0.1 (UPSCALER_HOST)")
    serve_p.add_argument("--port", type=int, help="default 8000 (UPSCALER_PORT)")
    serve_p.add_argument("--no-dashboard", action="store_true", help="skip the Ray dashboard")
    serve_p.add_argument("--dashboard-port", type=int, help="default 8265")
    serve_p.add_argument("--dashboard-host", help="default 127.0.0.1; 0.0.0.0 in containers")
    serve_p.add_argument("--metrics-port", type=int,
                         help="Prometheus endpoint of Ray's metrics, ours included "
                         "(UPSCALER_METRICS_PORT)")
    serve_p.add_argument("--ray-address", help="join an existing Ray cluster instead")
    serve_p.set_defaults(func=cmd_serve)

    models_p = sub.add_parser("models", help="list or pull model weights")
    models_sub = models_p.add_subparsers(dest="models_command", required=True)
    list_p = models_sub.add_parser("list", help="installed models and what can be pulled")
    common(list_p)
    list_p.set_defaults(func=cmd_models_list)
    pull_p = models_sub.add_parser("pull", help="download and verify models")
    common(pull_p)
    pull_p.add_argument("names", nargs="+", help="model names or groups: default, esrgan, dat")
    pull_p.add_argument("--force", action="store_true", help="download again")
    pull_p.set_defaults(func=cmd_models_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
