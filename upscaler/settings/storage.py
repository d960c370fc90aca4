"""Settings: where models, job storage and the download cache live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


def _default_data_dir() -> Path:
    # The project's own data/ folder when run from a checkout (the README's commands).
    return Path("data").resolve()


class StorageFields(BaseModel):
    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir,
                           description="Root for models (by default) and local job storage.")
    models_dir: Path | None = Field(
        default=None,
        description="Folder holding upscale_models/ (and later unet/, vae/, clip/). "
        "Default: DATA_DIR/models.")
    storage_url: str | None = Field(
        default=None,
        description="fsspec URL for jobs and results (file path, s3://..., gs://...). "
        "Default: DATA_DIR/storage.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for storage_url, as JSON (UPSCALER_STORAGE_OPTIONS), e.g. "
        '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}} for an S3-compatible '
        "store. Credentials are best left to the SDK's own environment (AWS_*, "
        "GOOGLE_APPLICATION_CREDENTIALS).")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "upscaler",
        description="Download cache for `upscaler models pull`.")

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def upscale_models_dir(self) -> Path:
        return self.resolved_models_dir / "upscale_models"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")
