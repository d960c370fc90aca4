"""Job records as the API answers them: the contract's camelCase names (``jobId``,
``outputUrl``, ...) beside the snake_case ones (``task_id``, ``output_url``, ...), and the status
code that goes with a job's state."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serve_app.schema_bleed import bleed_info
from serve_app.schema_quality import QualityReport
from serve_app.schemas import CropGuidance, ErrorResponse, JobStatusResponse, UpscaleResponse
from upscaler.domain.jobs import JobRecord, JobState

# Failures that are the service's, not the request's: a 500 when no status was recorded.
SERVICE_FAILURES = (None, "processing_failed", "worker_lost")


def output_url(job: JobRecord) -> str | None:
    if not job.result_filename or job.result_deleted:
        return None
    return f"/api/results/{job.result_filename}"


def status_url(job: JobRecord) -> str:
    return f"/api/status/{job.job_id}"


def upscale_body(job: JobRecord, estimated_time: float | None) -> UpscaleResponse:
    plan = job.plan
    crop = plan.crop_info
    return UpscaleResponse(
        jobId=job.job_id, task_id=job.job_id, status=job.state.value,
        outputUrl=output_url(job), processingTime=job.processing_time,
        estimatedTime=None if job.state.is_terminal else estimated_time,
        inputSize=job.input_size, outputSize=job.output_size, statusUrl=status_url(job),
        progress=int(job.progress), model=job.model, scaleFactor=round(plan.scale_factor, 6),
        dpi=plan.dpi,
        cropInfo=CropGuidance(direction=crop.direction, amount_px=crop.amount_px,
                              amount_inches=crop.amount_inches, box=crop.box) if crop else None,
        cropApplied=plan.crop_applied,
        bleed=bleed_info(plan, job.params.bleed, job.params.bleed_unit), error=job.error,
        expires_at=job.expires_at, quality=QualityReport.of(job.quality))


def upscale_response(job: JobRecord, estimated_time: float | None) -> JSONResponse:
    """POST's answer: 200 with the result when the job finished within the wait, 202 with a
    ``Location`` while it runs, the job's error status when it failed."""
    body = upscale_body(job, estimated_time)
    if job.state == JobState.completed:
        return JSONResponse(body.model_dump(mode="json"), status_code=200)
    if job.state == JobState.failed:
        err = ErrorResponse(error=job.error_code or "processing_failed",
                            message=job.error or "failed", jobId=job.job_id,
                            detail=body.model_dump(mode="json"))
        status = job.error_status or (500 if job.error_code in SERVICE_FAILURES else 422)
        headers = {"Retry-After": str(job.retry_after)} if job.retry_after else None
        return JSONResponse(err.model_dump(mode="json"), status_code=status, headers=headers)
    return JSONResponse(body.model_dump(mode="json"), status_code=202,
                        headers={"Location": body.statusUrl})


def job_status(job: JobRecord, queue_position: int | None = None,
               estimated_time: float | None = None,
               status_detail: str | None = None) -> JobStatusResponse:
    return JobStatusResponse(
        task_id=job.job_id, job_id=job.job_id, status=job.state.value,
        progress=int(job.progress), output_url=output_url(job), error=job.error,
        error_code=job.error_code, engine=job.engine.value, input_size=job.input_size,
        output_size=job.output_size, model=job.model, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, queue_time=job.queue_time,
        processing_time=job.processing_time, resumes=job.resumes, attempts=job.attempts,
        stats=job.stats, expires_at=job.expires_at, result_deleted=job.result_deleted,
        webhooks=job.webhooks, work=job.work,
        tiles_done=job.tiles_done, tiles_total=job.tiles_total,
        queue_position=queue_position if job.state == JobState.queued else None,
        estimated_time=None if job.state.is_terminal else estimated_time,
        status_detail=None if job.state.is_terminal else status_detail,
        bleed_px=round(job.plan.bleed_px, 3) if job.plan.trim_box else None,
        trim_box=job.plan.final_trim_box, quality=QualityReport.of(job.quality))
