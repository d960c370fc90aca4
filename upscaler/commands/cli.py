"""The `upscaler` command: `serve` runs the service in the foreground; `models` manages weights;
`keys` manages API keys; `cluster certs` makes Ray's TLS certificates; `upscale`, `status`,
`cancel` and `health` use a running service (through the client package, `upscaler_client`)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from serve_app.control_plane import dashboard_lines, prepare_own_cluster, restrict_token_file
from upscaler.commands.cluster_certs import add_cluster_commands
from upscaler.commands.keys_cli import add_keys_commands
from upscaler.domain.keys import KeyStore
from upscaler.domain.storage import Storage, StorageError
from upscaler.settings import SECRET_SETTINGS, Settings, load_settings
from upscaler_client.cli import EXIT_CODES, add_client_commands

# Package data: found beside the installed package, wherever it is installed.
CPU_SERVE_CONFIG = Path(str(resources.files("serve_app") / "serve_config.cpu.yaml"))
# The graph with the builder's own deployment options: `upscaler serve` on a GPU machine.
BUILT_IN_APP = {"name": "upscaler", "route_prefix": "/", "import_path": "serve_app.app:build_app"}
# Our TLS settings and the Serve http_options keys they fill.
TLS_HTTP_OPTIONS = {"tls_certfile": "ssl_certfile", "tls_keyfile": "ssl_keyfile"}


class ServeConfigError(ValueError):
    pass


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command's flags give (None where a flag was not used)."""
    return {name: getattr(args, name, None)
            for name in ("data_dir", "models_dir", "host", "port", "keys_file", "tls_certfile",
                         "tls_keyfile")}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_refusal(settings: Settings, insecure: bool) -> str | None:
    """Why `upscaler serve` will not start, if it would let anyone who reaches the port use
    the GPUs, fill the storage and spend the Vertex budget: beyond loopback without keys."""
    if settings.auth == "keys" or insecure or _is_loopback(settings.host):
        return None
    return (f"refusing to listen on {settings.host} without API keys: anyone who reaches the "
            "port could use the service. Turn keys on (UPSCALER_AUTH=keys, then `upscaler "
            "keys create NAME`), listen on 127.0.0.1, or pass --insecure if something in "
            "front of the service already authenticates every request (then name the hosts "
            "it forwards in UPSCALER_ALLOWED_HOSTS: with keys off only loopback is answered)")


def _settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(_cli_values(args))


def local_serve_config(path: Path | None, cli_values: dict[str, Any]):
    """The Serve config `upscaler serve` deploys: ``path`` (None: the built-in graph), with
    settings taken, highest first, from the command line, the ``UPSCALER_*`` environment (and
    ``.env``), the file's app ``args``, then the defaults. Returns the validated config and the
    settings the app will run with."""
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text()) if path else {"applications": [dict(BUILT_IN_APP)]}
    apps = raw.get("applications") or []
    if len(apps) != 1:
        raise ServeConfigError(f"{path}: expected one application, found {len(apps)}")
    cli = {k: v for k, v in cli_values.items() if v is not None}
    from_env = Settings()  # the environment and .env only
    # Secrets stay out of the config's args (Serve shows them in its status and dashboard):
    # the builder and replicas read them from the environment they inherit.
    env_values = from_env.model_dump(mode="json",
                                     include=from_env.model_fields_set - SECRET_SETTINGS)
    settings = load_settings({**(apps[0].get("args") or {}), **env_values, **cli})
    # data_dir always: its default is relative to the directory `upscaler serve` runs in.
    apps[0]["args"] = settings.model_dump(
        mode="json", include=(settings.model_fields_set | {"data_dir"}) - SECRET_SETTINGS)
    http = raw.setdefault("http_options", {})
    for key in ("host", "port"):
        if key in cli or key in from_env.model_fields_set or key not in http:
            http[key] = getattr(settings, key)
    for key, http_key in TLS_HTTP_OPTIONS.items():
        value = getattr(settings, key)
        if value is not None and (key in cli or key in from_env.model_fields_set
                                  or not http.get(http_key)):
            http[http_key] = str(value)
        elif http.get(http_key):  # the file's own: the proxies run in other directories
            http[http_key] = str(Path(http[http_key]).expanduser().resolve())
    tls = _check_tls(http.get("ssl_certfile"), http.get("ssl_keyfile"))
    config = ServeDeploySchema.model_validate(raw)
    return config, settings.model_copy(update={"host": http["host"], "port": http["port"],
                                               "tls_certfile": tls[0], "tls_keyfile": tls[1]})


def _check_tls(certfile: str | None, keyfile: str | None) -> tuple[Path | None, Path | None]:
    """Both files or neither, and readable here: otherwise the proxies would fail to start
    minutes later with an error in a Ray log, or (one alone) serve plain HTTP."""
    if bool(certfile) != bool(keyfile):
        raise ServeConfigError(
            "TLS needs both a certificate and its key: --tls-cert/UPSCALER_TLS_CERTFILE and "
            f"--tls-key/UPSCALER_TLS_KEYFILE (got only the {'certificate' if certfile else 'key'})")
    if not certfile or not keyfile:
        return None, None
    for what, name in (("certificate", certfile), ("key", keyfile)):
        if not os.access(name, os.R_OK) or not Path(name).is_file():
            raise ServeConfigError(f"TLS {what} file {name} is not a readable file")
    return Path(certfile), Path(keyfile)


def _last_error(message: str) -> str:
    """The exception line of a Serve failure message (which carries whole tracebacks)."""
    errors = [ln for ln in message.splitlines() if re.match(r"[\w.]+(Error|Exception): ", ln)]
    return errors[-1] if errors else message.strip().splitlines()[0]


def _print_urls(settings: Settings, args: argparse.Namespace, dashboard: str | None,
                token_auth: bool) -> None:
    scheme = "https" if settings.tls_certfile else "http"
    base = f"{scheme}://{settings.host}:{settings.port}"
    print(f"upscaler is up\n  API:       {base}/api", flush=True)
    if settings.docs:
        print(f"  Docs:      {base}/docs", flush=True)
    if dashboard and not args.no_dashboard:
        for line in dashboard_lines(dashboard, token_auth):
            print(f"  {line}", flush=True)
    metrics_port = args.metrics_port or settings.metrics_port
    if metrics_port:
        print(f"  Metrics:   http://127.0.0.1:{metrics_port}/metrics", flush=True)
    print(f"  Models:    {settings.upscale_models_dir}\n"
          f"  Storage:   {settings.resolved_storage_url}", flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not args.ray_address:
        # Our own cluster: token auth on, whatever Ray's default for this version is (off
        # before 2.59), and its token file (~/.ray/auth_token) owner-only before Ray reads it.
        prepare_own_cluster()
    cli_values = _cli_values(args)
    settings = load_settings(cli_values)
    KeyStore(settings.resolved_keys_file).tighten()  # owner-only, logged if it was not
    try:  # a wrong config or TLS pair stops here, before a cluster is started for nothing
        _, early = local_serve_config(args.config, cli_values)
    except ServeConfigError as exc:
        print(f"upscaler serve: {exc}", file=sys.stderr)
        return 2
    # Serve's proxies (started with this process's environment) cut oversized and stalled
    # uploads off before they queue them for the Ingress.
    from serve_app.proxy import proxy_environment  # here: it imports FastAPI and Ray

    for name, value in proxy_environment(early).items():
        os.environ.setdefault(name, value)

    import ray
    from ray import serve

    from serve_app.deploy_options import (
        CPU_NODE_RESOURCE,
        gpus_available,
        ingress_shutdown_s,
        node_type_resources,
    )
    from upscaler import ray_support

    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        print(f"\nupscaler: got {signal.Signals(signum).name}, shutting down ...", flush=True)
        stop.set()

    # address="local": always a new cluster of our own, never one a `ray start` left behind.
    # Its head declares itself a CPU node, as a cluster's does: the graph is placed the same.
    init_kwargs: dict = {"address": "local", "include_dashboard": not args.no_dashboard,
                         "resources": {CPU_NODE_RESOURCE: 1},
                         "dashboard_host": args.dashboard_host or settings.dashboard_host,
                         "logging_level": "WARNING"}
    if own_types := node_type_resources(early):  # a cluster's config, run on one machine
        init_kwargs["resources"] = {**init_kwargs["resources"], **own_types}
    if args.metrics_port or settings.metrics_port:
        init_kwargs["_metrics_export_port"] = args.metrics_port or settings.metrics_port
    if args.ray_address:
        init_kwargs = {"address": args.ray_address}
    elif args.dashboard_port:
        init_kwargs["dashboard_port"] = args.dashboard_port
    ray_context = ray.init(**init_kwargs)
    token_auth = ray_support.token_auth_enabled()
    if token_auth:
        restrict_token_file()
    # After ray.init: Ray installs its own SIGTERM handler, which aborts the process.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        path = args.config
        if path is None and not gpus_available(settings):
            path = CPU_SERVE_CONFIG
        config, settings = local_serve_config(path, cli_values)
        if refusal := exposure_refusal(settings, args.insecure):
            print(f"upscaler serve: {refusal}", file=sys.stderr, flush=True)
            return 2
        # A wrong storage location stops the start here, in seconds, with the setting to fix
        # (the builder and the Ingress check again wherever Serve runs them).
        ray_support.require_shared_storage(settings)
        Storage(settings.resolved_storage_url, settings.storage_options).check_usable()
        client = ray_support.serve_start(http_options=config.http_options.model_dump(),
                                        grpc_options=config.grpc_options.model_dump(),
                                        proxy_location=config.proxy_location)
        client.deploy_apps(config)
        name = config.applications[0].name
        print(f"upscaler: deploying {path or 'the built-in graph'} ...", flush=True)
        while not stop.is_set():  # replicas load their models before they report healthy
            app = serve.status().applications.get(name)
            if app is not None and app.status == "RUNNING":
                break
            if app is not None and app.status == "DEPLOY_FAILED":
                reasons = [f"{n}: {_last_error(d.message)}"
                           for n, d in app.deployments.items() if d.message]
                print("upscaler: the deployment failed: " + "\n".join([app.message, *reasons]),
                      file=sys.stderr, flush=True)
                return 1
            stop.wait(1)
        if not stop.is_set():
            _print_urls(settings, args, ray_context.dashboard_url, token_auth)
        while not stop.wait(0.5):
            pass
    except ServeConfigError as exc:
        print(f"upscaler serve: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"upscaler serve: {exc.message}", file=sys.stderr)
        return 1
    finally:
        try:
            # The Ingress may drain jobs for longer than serve.shutdown() waits.
            with contextlib.suppress(Exception):
                ray_support.shutdown_serve(ingress_shutdown_s(settings) + 10)
            serve.shutdown()
        finally:
            ray.shutdown()
    print("upscaler: stopped", flush=True)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from upscaler.commands.model_pull import CATALOG
    from upscaler.compute.engines.models import ModelRegistry

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
    missing = [n if e.sha256 else f"{n} (pin it first: --revision, --sha256)"
               for n, e in CATALOG.items()
               if e.subfolder == "upscale_models" and n not in registry.names()]
    if missing:
        print("available to pull: " + ", ".join(missing))
    from upscaler.compute.engines.flux_files import FluxFiles

    flux_missing = FluxFiles(settings.resolved_models_dir).missing()
    if flux_missing:
        print(f"FLUX: missing {len(flux_missing)} files - run `upscaler models pull flux`")
    else:
        print("FLUX: installed")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from upscaler.commands.model_pull import PullError, pins_from_args, pull

    settings = _settings_from(args)
    try:
        pull(args.names, settings, force=args.force, pins=pins_from_args(
            args.names, args.revision, args.sha256, args.pins))
    except PullError as exc:
        print(f"upscaler models pull: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upscaler", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    serve_p.add_argument("--insecure", action="store_true",
                         help="listen beyond loopback without API keys (only behind something "
                         "that authenticates every request)")
    serve_p.add_argument("--keys-file", help="API keys file (UPSCALER_KEYS_FILE)")
    serve_p.add_argument("--tls-cert", dest="tls_certfile", type=Path, metavar="FILE",
                         help="PEM certificate: serve HTTPS (UPSCALER_TLS_CERTFILE); "
                         "needs --tls-key")
    serve_p.add_argument("--tls-key", dest="tls_keyfile", type=Path, metavar="FILE",
                         help="PEM private key of --tls-cert (UPSCALER_TLS_KEYFILE)")
    serve_p.add_argument("--ray-address",
                         help="join an existing Ray cluster instead (with token auth: "
                         "RAY_AUTH_MODE=token and its token in the environment)")
    serve_p.add_argument("--config", type=Path, default=os.environ.get("UPSCALER_SERVE_CONFIG"),
                         help="a Ray Serve config file to deploy (UPSCALER_SERVE_CONFIG); "
                         "default: serve_config.cpu.yaml without GPUs, else the built-in graph "
                         "(FLUX 0.75 + ESRGAN 0.25 of each card)")
    serve_p.set_defaults(func=cmd_serve)

    add_keys_commands(sub)
    add_cluster_commands(sub)
    add_client_commands(sub)

    models_p = sub.add_parser("models", help="list or pull model weights")
    models_sub = models_p.add_subparsers(dest="models_command", required=True)
    list_p = models_sub.add_parser("list", help="installed models and what can be pulled")
    common(list_p)
    list_p.set_defaults(func=cmd_models_list)
    pull_p = models_sub.add_parser("pull", help="download and verify models")
    common(pull_p)
    pull_p.add_argument("names", nargs="+", help="model names or groups: default, esrgan, dat")
    pull_p.add_argument("--force", action="store_true", help="download again")
    pull_p.add_argument("--revision", help="with --sha256, for one hub model: the commit "
                        "(40 hex) to pull it at, for a file the catalog does not pin")
    pull_p.add_argument("--sha256", help="with --revision: the SHA-256 the file must have")
    pull_p.add_argument("--pins", type=Path, metavar="FILE", help="pins for hub files, a "
                        "line each: `<sha256> <commit> <repo>/<path in repo>`")
    pull_p.set_defaults(func=cmd_models_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
