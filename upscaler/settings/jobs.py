"""Settings of running jobs (leases, attempts, output encoding) and of their retention."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

# What older configs set (Pillow's names) for each of the three.
LEGACY_TIFF_COMPRESSION = {"raw": "none", "tiff_lzw": "lzw", "tiff_adobe_deflate": "deflate",
                           "tiff_deflate": "deflate", "zlib": "deflate"}


class JobFields(BaseModel):
    # --- jobs --------------------------------------------------------------------------
    sync_wait_s: float = Field(
        default=30.0, ge=0,
        description="How long POST waits for a job before answering `queued`.")
    heartbeat_s: float = Field(default=3.0, gt=0)
    stale_after_s: float = Field(
        default=30.0, gt=0,
        description="The lease of the Ingress driving a job, renewed by its heartbeat: a job "
        "whose lease ran out is taken over by any Ingress's sweep (re-run from its stored "
        "input, or resumed from its tiles).")
    ingress_replicas: int = Field(
        default=1, ge=1,
        description="Ingress replicas the builder starts (the production configs set 2): "
        "every one serves every job.")
    job_max_attempts: int = Field(
        default=3, ge=1,
        description="Times a job is run when its driver, replica or service dies under it; "
        "then it is failed (worker_lost).")
    ingress_drain_s: float = Field(
        default=60.0, ge=0,
        description="When the Ingress stops (a rollout, `serve shutdown`, SIGTERM), how long "
        "its ESRGAN/Imagen jobs in flight get to finish before they are handed over (another "
        "Ingress re-runs them). FLUX jobs are handed over at once: resumed from their tiles.")
    png_encoder: Literal["fast", "zlib"] = Field(
        default="fast",
        description="fast: 8-bit RGB/RGBA PNGs with fpng (5-6x faster than zlib level 1, 5-10% "
        "larger), 16-bit ones with zlib's RLE strategy (~2.5x faster, same size); zlib: "
        "every PNG with zlib's defaults at png_compress_level. All lossless; gray is zlib "
        "either way (bench/bench_encode.py).")
    png_compress_level: int = Field(default=1, ge=0, le=9,
                                    description="1 is ~3x faster than Pillow's 6 for ~15% size.")
    tiff_compression: Literal["none", "lzw", "deflate"] = Field(
        default="deflate",
        description="TIFF results' compression when a request names none (its "
        "`tiff_compression`): none, lzw or deflate (Adobe Deflate, lossless). Pillow's names "
        "(tiff_adobe_deflate, tiff_lzw, raw) are still accepted.")

    @field_validator("tiff_compression", mode="before")
    @classmethod
    def _tiff_compression(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return LEGACY_TIFF_COMPRESSION.get(value, value)
        return value

    # --- retention -------------------------------------------------------------------
    result_ttl_s: float = Field(
        default=7 * 86400, gt=0,
        description="How long a job's record, result and Idempotency-Key are kept after it "
        "ends (a key's own result_ttl_s wins); then the job answers 410 Gone.")
    orphan_grace_s: float = Field(
        default=3600, gt=0,
        description="An upload whose job record was never written, or a leftover *.tmp file, "
        "older than this is deleted by the retention sweep.")
    retention_sweep_s: float = Field(default=300, gt=0,
                                     description="Seconds between retention sweeps.")
    retention_sweep_batch: int = Field(
        default=500, ge=1, description="Entries a sweep looks at per folder, so one sweep "
        "stays cheap on a large bucket; the next sweep goes on where it stopped.")
