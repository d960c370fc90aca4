"""Settings: where models, job storage and the download cache live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

# fsspec protocols of this machine's own disk.
LOCAL_PROTOCOLS = ("file", "local")


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
    storage_shared_mount: bool = Field(
        default=False,
        description="A local storage_url is a filesystem mounted at the same path on every "
        "node (NFS and the like, with working file locks): a Ray cluster of several nodes may "
        "then use it. Otherwise a cluster needs a bucket (s3://, gs://).")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "upscaler",
        description="Download cache for `upscaler models pull`.")
    # --- gigapixel outputs (issue 23) ----------------------------------------------------
    scratch_dir: Path | None = Field(
        default=None,
        description="A folder on the engine node's own disk where a job's output is "
        "assembled (an on-disk canvas) and encoded before it goes to job storage; each "
        "job's files are removed when it ends. Needs room for about twice the largest "
        "output's raw pixels (3 bytes a pixel, 6 at 16 bits). Default: the system's "
        "temporary folder.")

    @property
    def resolved_scratch_dir(self) -> Path:
        import tempfile

        return self.scratch_dir or Path(tempfile.gettempdir()) / "upscaler-scratch"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def upscale_models_dir(self) -> Path:
        return self.resolved_models_dir / "upscale_models"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @property
    def storage_is_local(self) -> bool:
        """Whether job storage is this machine's disk (a path, file://, local://; in a chained
        fsspec URL the last target is where the bytes live)."""
        target = self.resolved_storage_url.rsplit("::", 1)[-1]
        return "://" not in target or target.split("://", 1)[0] in LOCAL_PROTOCOLS

    def cluster_storage_refusal(self, nodes: int, autoscaler_can_add_nodes: bool) -> str | None:
        """Why the service must not start with this storage on a Ray cluster of ``nodes``
        nodes: on separate machines an engine on another node cannot read the upload the
        Ingress wrote to its own disk (on one machine the nodes share a disk, which hides it)."""
        if not self.storage_is_local or self.storage_shared_mount:
            return None
        if nodes > 1:
            cluster = f"this Ray cluster has {nodes} nodes"
        elif autoscaler_can_add_nodes:
            cluster = "this Ray cluster's autoscaler can add nodes"
        else:
            return None
        return (f"job storage is a local folder ({self.resolved_storage_url}) but {cluster}, "
                "each with a disk of its own: set storage_url (UPSCALER_STORAGE_URL, or "
                "`storage_url` in the Serve config's args) to a bucket every node reaches, "
                "e.g. s3://BUCKET/upscaler or gs://BUCKET/upscaler (storage_options for an "
                "S3-compatible endpoint), or set storage_shared_mount "
                "(UPSCALER_STORAGE_SHARED_MOUNT=true) if that folder is one filesystem mounted "
                "on every node")
