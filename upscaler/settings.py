"""Service settings: one place for every knob, read from the environment (prefix ``UPSCALER_``),
an optional settings file, or explicit builder args (``serve_config.yaml`` ``args:``).

Precedence, highest first: builder args > environment > settings file > defaults.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    # The project's own data/ folder when run from a checkout (the README's commands).
    return Path("data").resolve()


# Ingress request slots that uploads, event streams and keyless requests can never take (see
# Settings._slots_for_health_and_status): keyed health, status and results answer in a flood.
KEYED_REQUEST_SLOTS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="UPSCALER_",
        env_file=os.environ.get("UPSCALER_SETTINGS_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

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

    # --- compute -----------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    esrgan_num_gpus: float | None = Field(
        default=None, ge=0,
        description="GPUs reserved per ESRGAN replica; None = 0.25 when Ray has GPUs, else 0.")
    esrgan_num_cpus: float = Field(default=1, ge=0)
    esrgan_min_replicas: int = Field(default=1, ge=0)
    esrgan_max_replicas: int = Field(default=2, ge=1)
    esrgan_max_ongoing_requests: int = Field(
        default=3, ge=1,
        description="Per replica: the running image, one waiting, and room for health and "
        "model questions. GPU work is serialised inside a replica, so a small number keeps "
        "queued work in the router, where autoscaling sees it.")
    cpu_threads: int | None = Field(
        default=None, ge=1,
        description="torch threads of an engine replica running on CPU. Ray limits an actor to "
        "its num_cpus (1) threads; None = every core, which is what a CPU-only box wants.")
    model_cache_size: int = Field(default=3, ge=1, description="Models kept loaded per replica.")
    default_models: Annotated[list[str], NoDecode] = Field(
        default=["4x-UltraSharp", "DAT_light_x4"],
        description="Model used when a request names none: the first of these that is present.")
    cpu_tile_size: int = Field(default=256, ge=32,
                               description="Automatic tile size (input px) on CPU.")
    tile_context: int | None = Field(
        default=None, ge=0,
        description="Input px of context around each tile; default per architecture "
        "(upscaler.compute.engines.tiling.CONTEXT_PX), enough for tiles to match one untiled pass.")
    esrgan_torch_compile: bool = Field(
        default=False, description="torch.compile the ESRGAN models on CUDA (the first images "
        "of each size pay for compiling).")

    # --- FLUX ----------------------------------------------------------------------------
    flux_num_gpus: float | None = Field(
        default=None, ge=0,
        description="GPUs per FLUX replica; None = 0.75 when a GPU is visible (so ESRGAN's "
        "0.25 fits beside it on one card), else 0.")
    flux_num_cpus: float = Field(default=0.25, ge=0)
    flux_min_replicas: int = Field(default=1, ge=0)
    flux_max_replicas: int = Field(default=1, ge=1)
    flux_idle_s: float = Field(
        default=300, ge=0,
        description="Seconds without work before an autoscaled FLUX replica stops; with "
        "flux_min_replicas 0 the last one goes too, and its GPU node can terminate.")
    flux_cold_start_s: float = Field(
        default=120, ge=0,
        description="Seconds a FLUX replica takes to start and load its weights: added to "
        "a job's estimate when none is running (scaled to zero).")
    flux_memory_mode: Literal["resident", "offload"] = Field(
        default="resident",
        description="resident: everything on the GPU (24 GB+); offload: model CPU offload "
        "and VAE tiling for 16 GB cards.")
    flux_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    flux_min_tile_size: int = Field(default=256, ge=16)
    flux_max_resumes: int = Field(default=3, ge=0,
                                  description="Times a FLUX job is resumed after a crash.")

    # --- Imagen (Vertex AI) -------------------------------------------------------------
    gcp_project_id: str | None = Field(default=None, description="Default project; a request's "
                                       "gcp_project_id wins, the credentials' project is last.")
    gcp_region: str = "us-central1"
    gcp_credentials_file: str | None = Field(
        default=None, description="Service-account key file; else application default "
        "credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity).")
    vertex_api_endpoint: str | None = Field(
        default=None, description="Default: REGION-aiplatform.googleapis.com. A private "
        "endpoint, or http://127.0.0.1:PORT for a test server.")
    imagen_model: str = "imagen-4.0-upscale-preview"
    imagen_add_watermark: bool = True
    imagen_deadline_s: float = Field(default=120, gt=0, description="Per request, retries in.")
    imagen_call_timeout_s: float = Field(default=60, gt=0, description="Per HTTP call.")
    imagen_max_ongoing_requests: int = Field(default=8, ge=1)
    imagen_max_replicas: int = Field(default=2, ge=1)

    # --- limits ------------------------------------------------------------------------
    max_upload_mb: float = Field(default=50, gt=0)
    max_input_pixels: int = Field(default=40_000_000, gt=0)
    max_output_pixels: int = Field(default=150_000_000, gt=0)
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
    tiff_compression: str = "tiff_adobe_deflate"

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

    # --- webhooks ----------------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks signing secret (whsec_<base64>); without "
        "it a request naming webhook_url is refused.")
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Hosts or CIDRs a webhook may reach although they resolve to loopback, "
        "private, link-local or reserved addresses (refused otherwise).")
    webhook_timeout_s: float = Field(
        default=15, gt=0, description="One deadline for a whole delivery attempt (connect, "
        "send, answer): a receiver that answers slowly is cut off at it.")
    webhook_https_only: bool = Field(
        default=False, description="Refuse plain http:// webhook URLs (at submit, and before "
        "each delivery). On in the production configs; off for loopback receivers.")
    webhook_dns_timeout_s: float = Field(
        default=3, gt=0, description="A webhook host's DNS look-up (on its own small thread "
        "pool, webhook_dns_threads) gets this long.")
    webhook_dns_threads: int = Field(default=4, ge=1,
                                     description="Threads for webhook hosts' DNS look-ups.")
    webhook_max_pending_per_key: int = Field(
        default=100, ge=1, description="Webhook deliveries one key may have pending per Ingress "
        "replica; a request with a webhook_url past it gets 429 and nothing is stored.")
    webhook_concurrency_per_key: int = Field(
        default=4, ge=1, description="Of webhook_concurrency, how many one key's deliveries "
        "may hold at once: slow receivers of one key never hold every sender.")
    webhook_retry_for_s: float = Field(
        default=3600, ge=0, description="How long a failed delivery is retried (exponential "
        "backoff, honouring Retry-After) before it is given up.")
    webhook_backoff_s: float = Field(default=1, gt=0, description="The first retry's delay.")
    webhook_backoff_max_s: float = Field(default=300, gt=0, description="The longest delay.")
    webhook_concurrency: int = Field(default=8, ge=1,
                                     description="Deliveries in flight per Ingress replica.")
    webhook_queue_size: int = Field(
        default=1000, ge=1, description="Deliveries waiting per Ingress replica; past it a "
        "delivery is recorded as dropped.")
    webhook_progress_interval_s: float = Field(
        default=5, ge=0, description="At most one `progress` event per job this often.")

    # --- HTTP --------------------------------------------------------------------------
    host: str = "127.0.0.1"
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Names the service answers to in the Host header (any port; others get "
        "400). Empty: loopback names only with auth none (no DNS rebinding), any with keys.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="`upscaler serve`: Ray's Prometheus metrics endpoint port (this node).")
    dashboard_host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) the Serve proxies present: HTTPS instead of HTTP. "
        "Needs tls_keyfile; both must be readable on every node that runs a proxy.")
    tls_keyfile: Path | None = Field(
        default=None, description="PEM private key of tls_certfile (unencrypted).")
    hsts_max_age_s: int = Field(
        default=31_536_000, ge=0, description="Strict-Transport-Security max-age on every "
        "answer sent over HTTPS (TLS on); 0 sends none.")

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

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value()
        try:
            key = base64.b64decode(text.removeprefix("whsec_") + "==")
        except ValueError:
            key = b""
        if not text.startswith("whsec_") or len(key) < 16:
            raise ValueError("webhook_secret must be a Standard Webhooks secret: whsec_ and the "
                             "base64 of 16-64 random bytes (24+ recommended)")
        return value

    @model_validator(mode="after")
    def _slots_for_health_and_status(self) -> Settings:
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

    # --- derived -----------------------------------------------------------------------
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
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def flux_coordinator_memory_bytes(self) -> int:
        return int(self.flux_coordinator_memory_gb * 2**30)

    @property
    def decode_budget_bytes(self) -> int:
        return self.decode_budget_mb * 2**20

    @property
    def resolved_keys_file(self) -> str:
        return self.keys_file or str(self.data_dir / "keys.json")


# Settings that are secrets: never written into a Serve config's args.
SECRET_SETTINGS = frozenset({"webhook_secret"})


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from env/file with explicit overrides (builder args) on top."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    return Settings(**overrides)
