"""Job and event types: what a job is, what an engine is asked to do, and what it reports back.

States: queued -> processing -> completed | failed | cancelled. A ``JobRecord`` is the stored
truth (JSON in job storage); a ``JobSpec`` is the part an engine needs, sent across a Ray
handle; engines answer with a stream of ``Started`` / ``Progress`` events and one
``Completed``. Every type here is typed per engine, so an engine the code forgets is an error
where the types are built, not a ``KeyError`` in a request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from upscaler.compute.dimensions import BleedUnit, OutputPlan
from upscaler.compute.encode_options import EncodeOptions, TiffCompression
from upscaler.domain.job_stats import JobStats
from upscaler.domain.quality import Quality
from upscaler.domain.webhooks import JOB_END_EVENTS, WebhookEvent, WebhookState
from upscaler.errors import UpscalerError


class Engine(str, Enum):
    esrgan = "esrgan"
    flux = "flux"
    imagen = "imagen"

    @property
    def resumable(self) -> bool:
        """FLUX keeps its finished tiles in storage: after a crash it resumes, not fails."""
        return self is Engine.flux


class JobState(str, Enum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.completed, JobState.failed, JobState.cancelled})
# A job's end is sent to its webhook as the event of the same name.
END_EVENTS: dict[JobState, WebhookEvent] = {JobState(e): e for e in JOB_END_EVENTS}
OutputFormat = Literal["png", "tiff", "jpeg"]
_ENCODE_DEFAULTS = EncodeOptions()


class Size(BaseModel):
    width: int
    height: int


# --- what each engine is asked to do ---------------------------------------------------------

class OutputOptions(BaseModel):
    """How every engine's result is sized (the print-size rule's inputs) and written."""

    output_format: OutputFormat = "png"
    target_dpi: int = 150
    target_width_inches: float | None = None
    target_height_inches: float | None = None
    target_width: int | None = None  # a pixel target (target_width/height), not inches
    target_height: int | None = None
    crop_to_target: bool = False
    # bleed (issue 23): around the print, sized by upscaler.compute.dimensions
    bleed: float = 0.0
    bleed_unit: BleedUnit = "in"
    # --- formats (issue 23): how the file is written for print ---
    jpeg_quality: int = _ENCODE_DEFAULTS.jpeg_quality
    tiff_compression: TiffCompression | None = None  # None: the server's setting
    metadata: Literal["keep", "strip"] = _ENCODE_DEFAULTS.metadata
    keep_gps: bool = _ENCODE_DEFAULTS.keep_gps
    output_profile: Literal["input", "srgb"] = _ENCODE_DEFAULTS.output_profile

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(jpeg_quality=self.jpeg_quality, metadata=self.metadata,
                             keep_gps=self.keep_gps, output_profile=self.output_profile)


class EsrganParams(OutputOptions):
    engine: Literal[Engine.esrgan] = Engine.esrgan
    model: str
    tile_size: int | None = None  # None: automatic
    use_fp16: bool = True
    upscale_factor: float = 4


class FluxParams(OutputOptions):
    engine: Literal[Engine.flux] = Engine.flux
    upscale_model: str  # the ESRGAN pre-pass
    upscale_factor: float = 4
    denoise: float = 0.2
    steps: int = 20
    tile_size: int = 512
    prompt: str = ""
    guidance: float = 3.5
    seed: int = 0
    mask_blur: int = 8
    tile_padding: int = 32
    color_fix: Literal["wavelet", "adain", "none"] = "wavelet"
    tile_order: Literal["chess", "parallel"] = "chess"
    seam_fix: Literal["none", "band_pass"] = "none"
    seam_fix_width: int = 64

    @property
    def model(self) -> None:
        return None  # FLUX.1-dev; the pre-pass model is ``upscale_model``


class ImagenParams(OutputOptions):
    engine: Literal[Engine.imagen] = Engine.imagen
    model: str
    factor: int  # what Vertex is asked for; the result is then resampled to the plan
    gcp_project_id: str
    gcp_region: str
    add_watermark: bool = True
    upscale_factor: str = "x4"


JobParams = Annotated[EsrganParams | FluxParams | ImagenParams, Field(discriminator="engine")]


class JobSpec(BaseModel):
    """What an engine deployment needs to run a job (its input is at ``input_key``)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    params: JobParams
    plan: OutputPlan
    input_format: str | None = None
    # The record's attempt this run is: the engine stops (and writes no result) once the
    # record has moved on to a newer one, so a job is never computed twice at once.
    attempt: int = 1

    @property
    def engine(self) -> Engine:
        return self.params.engine

    @property
    def result_filename(self) -> str:
        return f"{self.job_id}.{self.params.output_format}"


# --- what engines report back ----------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    replica: str


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    stage: str | None = None
    tile: int | None = None
    replica: str | None = None


@dataclass(frozen=True)
class Completed:
    result_key: str
    filename: str
    stats: JobStats | None = None
    quality: Quality | None = None  # the fidelity report (older engines: None)


JobEvent = Started | Progress | Completed


class JobWork(BaseModel):
    """What a job computes, as its key is charged for it (``upscaler.domain.metering``)."""

    megapixels: float  # every model pass and the resampled output, uncropped
    flux_megapixel_steps: float = 0.0  # FLUX: denoising steps x the megapixels of each tile
    passes: int = 0  # the ESRGAN passes (FLUX: of its pre-pass)
    flux_tiles: int = 0


# --- the stored record -----------------------------------------------------------------------

class JobRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")  # older records' dropped fields (owner) load

    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    engine: Engine
    state: JobState = JobState.queued
    progress: float = 0.0  # 0-100
    tiles_done: int | None = None  # of the engine's tiles, when it reports them
    tiles_total: int | None = None
    params: JobParams
    input_size: Size
    output_size: Size
    input_format: str | None = None
    plan: OutputPlan
    result_key: str | None = None
    result_filename: str | None = None
    error: str | None = None
    error_code: str | None = None
    error_status: int | None = None  # the HTTP status a failed job's error maps to
    retry_after: int | None = None
    stats: dict[str, Any] = Field(default_factory=dict)
    api_key_id: str | None = None  # the key that made it (keys on): its only reader
    resumes: int = 0
    # Durability (upscaler/domain/job_store.py): the stored version, grown by every conditional
    # write;
    # the lease of the runner driving the job; engine runs started (re-runs after a driver died).
    version: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None  # None (older records): heartbeat_at + stale_after_s
    attempts: int = 1
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float = Field(default_factory=time.time)
    retention_s: float | None = None  # kept this long after it ends (upscaler.domain.retention)
    result_deleted: bool = False  # DELETE on the finished job removed its result
    webhooks: WebhookState | None = None
    work: JobWork | None = None  # what it computes, charged at submit (older records: None)
    quality: Quality | None = None  # the fidelity report of a completed job (older: None)

    @model_validator(mode="before")
    @classmethod
    def _params_know_their_engine(cls, data: Any) -> Any:
        # Records written before params were typed per engine lack params.engine.
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = {**data, "params": {"engine": data.get("engine"), **data["params"]}}
        return data

    @property
    def resumable(self) -> bool:
        return self.engine.resumable

    @property
    def expires_at(self) -> float | None:
        """When the record and result go: retention_s after the job ended (while it runs, as
        if it ended now-ish: after it was created)."""
        if self.retention_s is None:
            return None
        return (self.finished_at or self.created_at) + self.retention_s

    def is_expired(self, now: float | None = None) -> bool:
        expires = self.expires_at
        return (expires is not None and self.state.is_terminal
                and (now or time.time()) >= expires)

    @property
    def model(self) -> str | None:
        return self.params.model

    def spec(self) -> JobSpec:
        return JobSpec(job_id=self.job_id, params=self.params, plan=self.plan,
                       input_format=self.input_format, attempt=self.attempts)

    @property
    def processing_time(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 3)

    @property
    def queue_time(self) -> float | None:
        return None if self.started_at is None else round(self.started_at - self.created_at, 3)

    def mark_processing(self) -> None:
        if self.state == JobState.queued:
            self.state = JobState.processing
            self.started_at = time.time()

    def mark_progress(self, event: Progress) -> None:
        self.progress = min(99.0, 100.0 * event.done / max(1, event.total))
        if event.stage is None:  # a stage (FLUX's pre-pass) is not tiles
            self.tiles_done, self.tiles_total = event.done, event.total

    def mark_completed(self, event: Completed) -> None:
        self.state = JobState.completed
        self.progress = 100.0
        if self.tiles_total is not None:
            self.tiles_done = self.tiles_total
        self.result_key = event.result_key
        self.result_filename = event.filename
        self.stats = {} if event.stats is None else event.stats.as_json()
        self.quality = event.quality
        self.finished_at = time.time()
        self.started_at = self.started_at or self.finished_at

    def mark_failed(self, message: str, code: str = "processing_failed",
                    status: int | None = None, retry_after: int | None = None) -> None:
        self.state = JobState.failed
        self.error, self.error_code = message, code
        self.error_status, self.retry_after = status, retry_after
        self.finished_at = time.time()

    def mark_failed_by(self, error: UpscalerError) -> None:
        """A failure the client caused or can act on: its code, status and retry hint."""
        self.mark_failed(error.message, error.code, error.http_status, error.retry_after)

    def mark_cancelled(self) -> None:
        self.state = JobState.cancelled
        self.error = self.error_code = "cancelled"
        self.finished_at = self.finished_at or time.time()

    def is_stale(self, stale_after_s: float, now: float | None = None) -> bool:
        """Open, and its driver's lease has run out: any runner may claim it."""
        expires = (self.heartbeat_at + stale_after_s if self.lease_expires_at is None
                   else self.lease_expires_at)
        return not self.state.is_terminal and (now or time.time()) > expires
