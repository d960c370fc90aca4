"""Service settings: one place for every knob, read from the environment (prefix ``UPSCALER_``),
an optional settings file, or explicit builder args (``serve_config.yaml`` ``args:``).

Precedence, highest first: builder args > environment > settings file > defaults. The fields
are declared by topic in this package's modules; ``Settings`` composes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from upscaler.settings.engines import EngineFields
from upscaler.settings.jobs import JobFields
from upscaler.settings.limits import KEYED_REQUEST_SLOTS, LimitFields
from upscaler.settings.serving import HttpFields
from upscaler.settings.storage import StorageFields
from upscaler.settings.webhooks import WebhookFields

__all__ = ["KEYED_REQUEST_SLOTS", "SECRET_SETTINGS", "Settings", "load_settings"]


# Pydantic takes the bases' fields last base first: listed in reverse, the fields keep the
# order of the topics (storage, engines, limits, jobs, webhooks, HTTP).
class Settings(HttpFields, WebhookFields, JobFields, LimitFields, EngineFields, StorageFields,
               BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="UPSCALER_",
        env_file=os.environ.get("UPSCALER_SETTINGS_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    @field_validator("data_dir", "models_dir", "cache_dir", "tls_certfile", "tls_keyfile")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Replicas run in other working directories: resolve once, where settings are read.
        return value.expanduser().resolve() if value is not None else None

    @field_validator("default_models", "gcp_allowed_projects", "webhook_allowed_hosts",
                     "allowed_hosts", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def resolved_keys_file(self) -> str:
        return self.keys_file or str(self.data_dir / "keys.json")


# Settings that are secrets: never written into a Serve config's args.
SECRET_SETTINGS = frozenset({"webhook_secret"})


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from env/file with explicit overrides (builder args) on top."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    return Settings(**overrides)
