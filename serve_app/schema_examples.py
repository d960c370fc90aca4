"""Examples of the API's requests and answers, for the OpenAPI document (``/docs``): real
shapes, as the service gives them (a 1200x800 photo to a 24x16 in print at 300 dpi)."""

from __future__ import annotations

JOB_ID = "3f2b9c4e8a1d4f6b9e0c7a5d2b1e8f3c"
_SIZES = {"inputSize": {"width": 1200, "height": 800},
          "outputSize": {"width": 7200, "height": 4800}}

# fidelity (issue 23): a 2 x 3 tile grid of a 7200 x 4800 output
QUALITY = {"delta_e_mean": 0.41, "delta_e_p95": 1.12, "seam_score": 1.01, "tiles_rerun": 0,
           "tile_grid": [2, 3], "tiles": [
               {"box": [x, y, x + 2400, y + 2400], "delta_e_mean": de}
               for (x, y), de in zip([(x, y) for y in (0, 2400) for x in (0, 2400, 4800)],
                                     (0.38, 0.45, 0.40, 0.36, 0.47, 0.41), strict=True)]}
UPSCALE_COMPLETED = {
    "jobId": JOB_ID, "task_id": JOB_ID, "status": "completed",
    "outputUrl": f"/api/results/{JOB_ID}.tiff", "processingTime": 4.21, "estimatedTime": None,
    **_SIZES, "statusUrl": f"/api/status/{JOB_ID}", "progress": 100,
    "model": "4x-UltraSharp", "scaleFactor": 6.0, "dpi": 300, "cropInfo": None,
    "cropApplied": False, "error": None, "quality": QUALITY}
UPSCALE_QUEUED = {**UPSCALE_COMPLETED, "status": "queued", "outputUrl": None,
                  "processingTime": None, "estimatedTime": 12.5, "progress": 0,
                  "quality": None}

_STATUS_SIZES = {"input_size": {"width": 1200, "height": 800},
                 "output_size": {"width": 7200, "height": 4800}}
STATUS_PROCESSING = {
    "task_id": JOB_ID, "job_id": JOB_ID, "status": "processing", "progress": 42,
    "output_url": None, "error": None, "error_code": None, "engine": "esrgan",
    **_STATUS_SIZES, "model": "4x-UltraSharp", "created_at": 1767225600.0,
    "started_at": 1767225600.4, "finished_at": None, "queue_time": 0.4,
    "processing_time": None, "resumes": 0, "stats": {}}
STATUS_COMPLETED = {**STATUS_PROCESSING, "status": "completed", "progress": 100,
                    "output_url": f"/api/results/{JOB_ID}.tiff", "finished_at": 1767225604.6,
                    "processing_time": 4.21, "quality": QUALITY}
STATUS_CANCELLED = {**STATUS_PROCESSING, "status": "cancelled", "finished_at": 1767225602.0,
                    "error": "cancelled", "error_code": "cancelled"}

HEALTH = {"status": "healthy", "gpu_available": True, "gpu_name": "NVIDIA L4",
          "gpu_memory_free": 17.8, "models_loaded": ["esrgan", "flux"], "queue_size": 1,
          "engines": {"esrgan": {"device": "cuda", "models_loaded": ["4x-UltraSharp"]}},
          "scope": "service"}
LIVENESS = {"status": "healthy"}
USAGE = {"key_id": "3f9a1c0b7d2e", "name": "backend-prod", "metered": True,
         "megapixels_today": {"used": 412.7, "limit": 5000},
         "flux_megapixel_steps_today": {"used": 380.2, "limit": 20000},
         "jobs_today": {"used": 57, "limit": 10000}, "open_jobs": {"used": 2, "limit": 8},
         "stored_bytes": {"used": 1834201112, "limit": 21474836480},
         "requests_per_minute": 600, "resets_in_s": 31544}
MODELS = {"esrgan": {
    "models": [{"name": "4x-UltraSharp", "architecture": "ESRGAN", "scale": 4,
                "input_channels": 3, "output_channels": 3, "supports_half": True,
                "supports_bfloat16": True, "size_bytes": 66961958,
                "file": "4x-UltraSharp.pth"}],
    "unloadable": {}, "default": "4x-UltraSharp"}}
ERROR = {"error": "unknown_model", "message": "unknown model 'x'; available models: "
         "4x-UltraSharp, DAT_light_x4", "detail": "unknown model 'x'", "jobId": None}

FORM_ESRGAN = [{"upscale_factor": 4},
               {"model": "4x-UltraSharp", "target_width_inches": 24,
                "target_height_inches": 16, "target_dpi": 300, "output_format": "tiff"}]
FORM_FLUX = [{"upscale_factor": 2, "denoise": 0.2, "steps": 20, "tile_size": 1024}]
FORM_IMAGEN = [{"upscale_factor": "x4", "target_dpi": 300, "output_format": "png"}]
PLAN = {"engine": "esrgan", "inputSize": {"width": 1200, "height": 800},
        "outputSize": {"width": 7200, "height": 4800},
        "finalSize": {"width": 7200, "height": 4800}, "scaleFactor": 6.0, "dpi": 300,
        "printInches": [24.0, 16.0], "cropInfo": None, "cropApplied": False,
        "estimatedTime": 6.5}
