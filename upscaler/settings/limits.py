"""Settings that bound what the service takes on: sizes, concurrency, API keys' quotas
and rate limits, and event streams."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import NoDecode

# Ingress request slots that uploads, event streams and keyless requests can never take (see
# LimitFields._slots_for_health_and_status): keyed health, status and results answer in a flood.
KEYED_REQUEST_SLOTS = 32


class LimitFields(BaseModel):
    # --- limits ------------------------------------------------------------------------
    max_upload_mb: float = Field(default=50, gt=0)
    max_input_pixels: int = Field(default=40_000_000, gt=0)
    max_output_pixels: int = Field(
        default=150_000_000, gt=0,
        description="Pixels an output may have. Up to 1.5e9 (and beyond) is supported: ESRGAN "
        "outputs are assembled on disk (scratch_dir) and streamed, so a job's memory follows "
        "its tile, not its output (bench/bench_memory.py).")
    max_scale: float = Field(default=16.0, gt=1)
    max_model_passes: int = Field(default=3, ge=1)
    max_open_jobs: int = Field(
        default=100, ge=1,
        description="Open (queued or running) jobs per engine, all keys together; past it a new "
        "job gets 503 with Retry-After and nothing is stored.")
    max_concurrent_uploads: int = Field(
        default=32, ge=1,
        description="Upscale requests an Ingress replica holds at once, from their headers to "
        "their answer (a synchronous wait included); past it 503 with Retry-After, before a "
        "byte of the body is read.")
    max_concurrent_uploads_per_key: int = Field(
        default=8, ge=1, description="The same, per API key and Ingress replica; past it 429.")
    max_unauthenticated_requests: int = Field(
        default=32, ge=1,
        description="Requests without a valid key (health's liveness, the page, the docs) an "
        "Ingress replica holds at once (keys on); past it 503 at once.")
    ingress_max_ongoing_requests: int = Field(
        default=200, ge=1,
        description="Requests an Ingress replica takes at once (Serve's max_ongoing_requests). "
        "Must exceed uploads + event streams + unauthenticated requests by "
        "KEYED_REQUEST_SLOTS: the slots health and status always find.")
    decode_budget_mb: int = Field(
        default=1024, ge=64,
        description="Memory an Ingress replica may spend decoding uploads at once (each "
        "upload is decoded once to check it); uploads beyond it wait their turn.")
    decode_timeout_s: float = Field(
        default=30, gt=0, description="An upload whose check decode takes longer is refused "
        "(422 decode_too_slow); the decode runs in a worker process, stopped at the limit.")
    decode_workers: int = Field(default=2, ge=1, description="Decode worker processes per "
                                "Ingress replica (started on first use); more uploads wait.")
    upload_idle_timeout_s: float = Field(
        default=30, gt=0, description="An upload that sends nothing for this long gets 408.")
    upload_timeout_s: float = Field(
        default=600, gt=0, description="An upload still arriving after this long gets 408.")
    upload_min_bytes_per_s: int = Field(
        default=32 * 1024, ge=0, description="A body arriving slower than this on average "
        "(after upload_min_rate_after_s) gets 408: a trickle holds no slot for long.")
    upload_min_rate_after_s: float = Field(
        default=10, gt=0, description="The grace before upload_min_bytes_per_s applies.")
    flux_coordinator_memory_gb: float = Field(
        default=16, gt=0,
        description="Memory the FLUX coordinator may hold for the images of its jobs; a job "
        "waits (queued) until its image fits, and one too big for all of it is refused.")

    # --- access: API keys, quotas, rate limits -----------------------------------------
    auth: Literal["none", "keys"] = Field(
        default="none",
        description="`keys`: every request but the health liveness needs an API key "
        "(`upscaler keys create NAME`). `none` is for loopback: `upscaler serve` refuses to "
        "listen beyond loopback without keys unless told --insecure.")
    keys_file: str | None = Field(
        default=None,
        description="Where API keys are kept, hashed (a path or an fsspec URL every Ingress "
        "reaches). Default: DATA_DIR/keys.json. Re-read while the service runs.")
    rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per minute per key (a token bucket).")
    max_open_jobs_per_key: int = Field(default=8, ge=1,
                                       description="Queued or running jobs per key.")
    max_output_mp_per_day: float = Field(
        default=5000, gt=0, description="Megapixels computed per key per UTC day: every model "
        "pass's image and the resampled output, uncropped (upscaler/domain/metering.py).")
    max_flux_mp_steps_per_day: float = Field(
        default=20000, gt=0, description="FLUX work per key per UTC day, in megapixel-steps: "
        "each tile's crop (padding included) in megapixels x the denoising steps run on it.")
    max_jobs_per_day: int = Field(default=10000, ge=1,
                                  description="Jobs accepted per key per UTC day.")
    max_stored_mb_per_key: float = Field(
        default=20480, gt=0, description="Bytes of results a key keeps (until deleted or "
        "expired), in MiB; past it new jobs get 429.")
    gcp_allowed_projects: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Google Cloud projects a request's gcp_project_id may name besides the "
        "server's own (UPSCALER_GCP_PROJECT_ID); keys can allow more.")
    docs: bool = Field(default=True, description="Serve /docs, /openapi.json and Swagger UI's "
                       "files (on for `make run`; the production configs turn it off).")
    web_page: bool = Field(default=True, description="Serve the web page at `/` (else `/` "
                           "leads to /docs).")

    # --- live progress (server-sent events, GET /api/jobs/{id}/events) ------------------
    events_max_streams: int = Field(
        default=64, ge=1,
        description="Event streams an Ingress replica keeps open at once (each holds one of "
        "its request slots); past it 503 with Retry-After.")
    events_max_streams_per_key: int = Field(
        default=8, ge=1, description="Event streams one API key keeps open at once per Ingress "
        "replica; past it 429 with Retry-After.")
    events_poll_s: float = Field(
        default=0.25, gt=0, description="A stream following a job this replica drives is "
        "woken by each change; at the latest after this long it looks again anyway.")
    events_storage_poll_s: float = Field(
        default=1.0, gt=0, description="How often a stream reads the record of a job another "
        "replica drives (from job storage).")
    events_keepalive_s: float = Field(
        default=15, gt=0, description="A comment line this often, so proxies keep an idle "
        "stream open.")

    @model_validator(mode="after")
    def _slots_for_health_and_status(self) -> LimitFields:
        # Each of these holds a request slot for as long as its client likes; capped together
        # below Serve's limit, they leave health and status slots no flood can take.
        held = (self.max_concurrent_uploads + self.events_max_streams
                + self.max_unauthenticated_requests)
        if held + KEYED_REQUEST_SLOTS > self.ingress_max_ongoing_requests:
            raise ValueError(
                f"max_concurrent_uploads + events_max_streams + max_unauthenticated_requests "
                f"({held}) must leave {KEYED_REQUEST_SLOTS} of ingress_max_ongoing_requests "
                f"({self.ingress_max_ongoing_requests}) for health and status")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def flux_coordinator_memory_bytes(self) -> int:
        return int(self.flux_coordinator_memory_gb * 2**30)

    @property
    def decode_budget_bytes(self) -> int:
        return self.decode_budget_mb * 2**20
