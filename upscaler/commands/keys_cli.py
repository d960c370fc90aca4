"""`upscaler keys create|list|revoke|rotate-webhook-secret`: API keys for a service with
UPSCALER_AUTH=keys, each with its own webhook signing secret."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from upscaler.domain.keys import KeyLimits, KeyStore
from upscaler.errors import UpscalerError
from upscaler.settings import load_settings


def _key_store(args: argparse.Namespace) -> KeyStore:
    settings = load_settings({"data_dir": args.data_dir, "keys_file": args.keys_file})
    store = KeyStore(settings.resolved_keys_file)
    store.tighten()  # a file made before keys were kept owner-only, or by hand
    return store


def cmd_keys_create(args: argparse.Namespace) -> int:
    limits = KeyLimits(rate_limit_per_minute=args.rate_limit, max_open_jobs=args.max_open_jobs,
                       max_output_mp_per_day=args.max_output_mp_per_day,
                       max_flux_mp_steps_per_day=args.max_flux_mp_steps_per_day,
                       max_jobs_per_day=args.max_jobs_per_day, max_stored_mb=args.max_stored_mb,
                       gcp_projects=args.gcp_project or [], result_ttl_s=args.result_ttl_s)
    store = _key_store(args)
    try:
        record, key = store.create(args.name, limits, admin=args.admin)
    except (UpscalerError, ValueError) as exc:
        print(f"upscaler keys create: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(f"created {'admin ' if record.admin else ''}key {record.key_id} ({record.name}) in "
          f"{store.url}")
    print("webhooks of this key's jobs are signed with its own secret; verify them with:")
    print(f"webhook secret: {record.webhook_secret}")
    print("the key is shown once, here; only its hash is kept. Send it as "
          "`Authorization: Bearer <key>` or `X-API-Key: <key>`:")
    print(key)  # alone on the last line, for scripts
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    def when(t: float | None) -> str:
        return "-" if t is None else datetime.datetime.fromtimestamp(
            t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")

    records = _key_store(args).list()
    print(f"{'id':14s} {'name':24s} {'created (UTC)':17s} {'revoked':17s} {'webhooks':9s} "
          f"{'role':6s} limits")
    for r in records:
        limits = {k: v for k, v in r.limits.model_dump().items() if v}
        # Whether the key signs with its own secret (never the secret), or the server's.
        signs = "own" if r.webhook_secret else "server's"
        print(f"{r.key_id:14s} {r.name:24s} {when(r.created_at):17s} {when(r.revoked_at):17s} "
              f"{signs:9s} {'admin' if r.admin else 'tenant':6s} {limits or 'server defaults'}")
    if not records:
        print("(no keys) - `upscaler keys create NAME`")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    try:
        record = _key_store(args).revoke(args.key)
    except UpscalerError as exc:
        print(f"upscaler keys revoke: {exc.message}", file=sys.stderr)
        return 2
    print(f"revoked key {record.key_id} ({record.name}); requests with it now get 403")
    return 0


def cmd_keys_rotate_webhook_secret(args: argparse.Namespace) -> int:
    try:
        record = _key_store(args).rotate_webhook_secret(args.key)
    except UpscalerError as exc:
        print(f"upscaler keys rotate-webhook-secret: {exc.message}", file=sys.stderr)
        return 2
    print(f"new webhook secret for key {record.key_id} ({record.name}); deliveries are "
          "signed with it within seconds (the service re-reads the keys file), the old one "
          "no longer. It is shown once, here:")
    print(record.webhook_secret)  # alone on the last line, for scripts
    return 0


def add_keys_commands(sub: argparse._SubParsersAction) -> None:
    keys_p = sub.add_parser(
        "keys", help="API keys: create, list, revoke, rotate-webhook-secret (UPSCALER_AUTH=keys)",
        description="API keys. Each key has its own webhook signing secret (whsec_...), shown "
        "once by `create` and `rotate-webhook-secret`: the webhooks of jobs submitted with the "
        "key are signed with it (keys made before keys had one: UPSCALER_WEBHOOK_SECRET).")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    create_p = keys_sub.add_parser(
        "create", help="a new key, printed once (last line), and its webhook secret (once)")
    create_p.add_argument("name", help="who the key is for, e.g. backend-prod")
    create_p.add_argument("--rate-limit", type=int, help="requests per minute (default: server)")
    create_p.add_argument("--max-open-jobs", type=int, help="queued or running jobs at once")
    create_p.add_argument("--max-output-mp-per-day", type=float,
                          help="megapixels computed per UTC day (every pass, uncropped)")
    create_p.add_argument("--max-flux-mp-steps-per-day", type=float,
                          help="FLUX megapixel-steps per UTC day (tile MP x steps run)")
    create_p.add_argument("--max-jobs-per-day", type=int, help="jobs per UTC day")
    create_p.add_argument("--max-stored-mb", type=float,
                          help="MiB of results kept at once (until deleted or expired)")
    create_p.add_argument("--result-ttl-s", type=float,
                          help="seconds this key's finished jobs and results are kept")
    create_p.add_argument("--gcp-project", action="append",
                          help="a Google Cloud project this key may name (repeatable)")
    create_p.add_argument("--admin", action="store_true",
                          help="an operator's key: health shows it every tenant's queue, the "
                          "Google Cloud project and storage (other keys: their own figures)")
    create_p.set_defaults(func=cmd_keys_create)
    list_keys_p = keys_sub.add_parser("list", help="keys, without their secrets")
    list_keys_p.set_defaults(func=cmd_keys_list)
    revoke_p = keys_sub.add_parser("revoke", help="stop a key at once (403)")
    revoke_p.add_argument("key", help="the key's id or name")
    revoke_p.set_defaults(func=cmd_keys_revoke)
    rotate_p = keys_sub.add_parser(
        "rotate-webhook-secret", help="a new webhook signing secret for a key, printed once "
        "(last line); the old one stops signing")
    rotate_p.add_argument("key", help="the key's id or name")
    rotate_p.set_defaults(func=cmd_keys_rotate_webhook_secret)
    for p in (create_p, list_keys_p, revoke_p, rotate_p):
        p.add_argument("--data-dir", type=Path, help="default: ./data (UPSCALER_DATA_DIR)")
        p.add_argument("--keys-file", help="default: DATA_DIR/keys.json (UPSCALER_KEYS_FILE)")
