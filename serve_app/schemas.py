"""API response models. Field names are the API contract clients depend on (README
"Endpoints"): new fields are additions, never renames. The request forms: ``serve_app.forms``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app import schema_examples as ex
from serve_app.schema_bleed import BleedInfo
from serve_app.schema_quality import QualityReport
from upscaler.domain.jobs import JobWork, Size
from upscaler.domain.webhooks import WebhookStatus


class CropGuidance(BaseModel):
    direction: Literal["vertical", "horizontal"]
    amount_px: int
    amount_inches: float
    box: tuple[int, int, int, int] = Field(description="Centred crop box (left, top, right, "
                                           "bottom) in output pixels.")


class UpscaleResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ex.UPSCALE_COMPLETED,
                                                              ex.UPSCALE_QUEUED]})

    jobId: str
    task_id: str = Field(description="Same as jobId, for clients that read task_id.")
    status: Literal["queued", "processing", "completed", "failed", "cancelled"]
    outputUrl: str | None = None
    processingTime: float | None = None
    estimatedTime: float | None = None
    inputSize: Size
    outputSize: Size
    statusUrl: str
    progress: int = 0
    model: str | None = None
    scaleFactor: float
    dpi: int
    cropInfo: CropGuidance | None = None
    cropApplied: bool = False
    bleed: BleedInfo | None = Field(None, description="The bleed and the trim box (None "
                                    "without a bleed).")
    error: str | None = None
    expires_at: float | None = Field(None, description="When the job's record and result are "
                                     "deleted (Unix time; retention after the job ends).")
    # fidelity (issue 23)
    quality: QualityReport | None = Field(None, description="The fidelity report, once "
                                          "completed.")


class JobStatusResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ex.STATUS_PROCESSING,
                                                              ex.STATUS_COMPLETED]})

    task_id: str
    job_id: str
    status: Literal["queued", "processing", "completed", "failed", "cancelled"]
    progress: int = Field(ge=0, le=100)
    output_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    engine: str
    input_size: Size
    output_size: Size
    model: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_time: float | None = None
    processing_time: float | None = None
    resumes: int = Field(0, description="Times the job was resumed after a crash (FLUX).")
    attempts: int = Field(1, description="Runs of the job: more than 1 when the process "
                          "driving or computing it died and it was run again (bounded by "
                          "UPSCALER_JOB_MAX_ATTEMPTS).")
    stats: dict[str, Any] = Field(default_factory=dict)
    expires_at: float | None = Field(None, description="When the job's record and result are "
                                     "deleted (Unix time); then the job answers 410.")
    result_deleted: bool = Field(False, description="DELETE removed the finished job's result.")
    webhooks: WebhookStatus | None = Field(None, description="The job's webhook and the outcome "
                                          "of each delivery.")
    work: JobWork | None = Field(None, description="What the job computes, as its key was "
                                 "charged at submit (GET /api/usage).")
    tiles_done: int | None = Field(None, description="Tiles finished, when the engine "
                                   "reports tiles.")
    tiles_total: int | None = Field(None, description="Tiles of the job, when known.")
    queue_position: int | None = Field(
        None, description="While queued: jobs of the same engine ahead of it (when the "
        "replica answering drives it).")
    estimated_time: float | None = Field(
        None, description="While open: seconds left, estimated from the engine's measured "
        "rate, the jobs ahead and the progress so far (and, while its engine has no replica, "
        "the wait for one: gpu_node_start_s and the engine's cold start).")
    status_detail: str | None = Field(
        None, description="While open and its engine has no replica running (scaled to zero, "
        "or its node lost): `waiting for a GPU node` (none can run it; the autoscaler "
        "launches one) or `waiting for its engine to start`.")
    bleed_px: float | None = Field(None, description="The bleed a side in output pixels "
                                   "(None without a bleed).")
    trim_box: tuple[int, int, int, int] | None = Field(
        None, description="With a bleed: the print without it (left, top, right, bottom) in "
        "the pixels of the file (output_size).")
    # fidelity (issue 23)
    quality: QualityReport | None = Field(None, description="The fidelity report of a "
                                          "completed job (null before, and for older jobs).")


class PlanResponse(BaseModel):
    """What an upload would give, before sending it (GET /api/plan): the print-size rule's
    answer and the time it would take now."""

    engine: str
    inputSize: Size
    outputSize: Size = Field(description="What the engine makes (the filled size).")
    finalSize: Size = Field(description="The file's size: the print itself when the crop is "
                            "applied, else outputSize.")
    scaleFactor: float
    dpi: int
    printInches: tuple[float, float] = Field(description="finalSize at dpi, in inches (with "
                                             "a bleed: the print and its bleed).")
    cropInfo: CropGuidance | None = None
    cropApplied: bool = False
    bleed: BleedInfo | None = Field(None, description="The bleed and the trim box (None "
                                    "without a bleed).")
    trimInches: tuple[float, float] | None = Field(
        None, description="With a bleed: the print without it (the trim box at dpi), in inches.")
    estimatedTime: float = Field(description="Seconds, with the jobs of that engine open here.")
    computedMegapixels: float | None = Field(
        None, description="Megapixels the default model would compute (every pass and the "
        "resampled output, uncropped): what the key is charged (ESRGAN; FLUX's pre-pass).")


class UsageFigure(BaseModel):
    used: float
    limit: float


class UsageResponse(BaseModel):
    """The calling key's usage and limits now (GET /api/usage)."""

    model_config = ConfigDict(json_schema_extra={"examples": [ex.USAGE]})

    key_id: str | None = Field(description="The key's id (None with keys off).")
    name: str
    metered: bool = Field(description="Whether the limits apply (keys on).")
    megapixels_today: UsageFigure = Field(
        description="Megapixels computed today (UTC): every model pass's image and the "
        "resampled output, uncropped, charged at submit.")
    flux_megapixel_steps_today: UsageFigure = Field(
        description="FLUX work today: each tile's crop (padding included) in megapixels x "
        "the denoising steps run on it.")
    jobs_today: UsageFigure
    open_jobs: UsageFigure = Field(description="Queued or running now.")
    stored_bytes: UsageFigure = Field(description="Bytes of this key's results kept (until "
                                      "DELETE /api/jobs/{id} or their expiry).")
    requests_per_minute: int
    resets_in_s: int = Field(description="Seconds until the day's counts start again.")


class HealthResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ex.HEALTH]})

    status: Literal["healthy", "degraded"]
    gpu_available: bool
    gpu_name: str | None = None
    gpu_memory_free: float | None = Field(None, description="GB")
    models_loaded: list[str] = Field(description="Engines that are up, e.g. ['esrgan'].")
    queue_size: int = Field(description="Jobs accepted and not finished: the key's own "
                            "(scope key), or every tenant's (scope service).")
    engines: dict[str, Any] = Field(default_factory=dict, description="Each engine's "
                                    "readiness (scope key) or its whole status (scope service).")
    scope: Literal["service", "key"] = Field(
        "service", description="`key`: the figures of the key that asked; `service`: the "
        "whole service's (an admin key, or keys off).")


class LivenessResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ex.LIVENESS]})

    status: Literal["healthy", "degraded"]


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ex.ERROR]})

    error: str = Field(description="Machine-readable code.")
    message: str = Field(description="What went wrong and what to fix.")
    detail: Any = None
    jobId: str | None = None
    error_id: str | None = Field(
        default=None, description="On a 5xx: the id the service's log has this failure's "
        "details under (quote it to the operator).")
