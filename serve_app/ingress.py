"""FastAPI ingress deployment: parses and validates requests, owns job records, routes work to
the engine deployments through DeploymentHandles. It never touches a model, and runs everything
blocking (image probing, storage I/O) in threads so it stays responsive while replicas work."""


import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from engines.imagen import ImagenError, choose_factor, request_image_bytes
from engines.imagen import model_spec as imagen_model
from serve_app import __version__, metrics
from serve_app.dimensions import OutputPlan, calculate_output_dimensions
from serve_app.images import MEDIA_TYPES, ImageInputError, ImageProbe, probe_image
from serve_app.jobs import ENGINES, JobNotFound, JobRecord, JobState, JobStore, Size
from serve_app.schemas import (
    CommonUpscaleForm,
    CropGuidance,
    ErrorResponse,
    EsrganUpscaleForm,
    FluxUpscaleForm,
    HealthResponse,
    ImagenUpscaleForm,
    JobStatusResponse,
    UpscaleResponse,
)
from serve_app.settings import Settings
from serve_app.storage import Storage

logger = logging.getLogger("ray.serve")
RESULT_NAME_RE = re.compile(r"^[0-9a-f]{32}\.(png|tiff)$")
PREFER_WAIT_RE = re.compile(r"wait=(\d+(?:\.\d+)?)")
CHUNK = 1024 * 1024
# Seconds per output megapixel before anything was measured (replaced by measurements).
INITIAL_SECONDS_PER_MP = {("esrgan", "cpu"): 8.0, ("esrgan", "cuda"): 0.3,
                          ("flux", "cpu"): 600.0, ("flux", "cuda"): 8.0}


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str, job_id: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.code, self.message = status_code, code, message
        self.job_id, self.headers = job_id, headers


def _error_response(status: int, code: str, message: str, detail: Any = None,
                    job_id: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, detail=detail if detail is not None
                         else message, jobId=job_id)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps replica exceptions (RayTaskError); get the original back."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


app = FastAPI(
    title="upscaler",
    version=__version__,
    description="Image upscaling for print: ESRGAN-family models on Ray Serve. Upload an image, "
    "get a larger one sized for the print you want (see the print-size rule in the README).",
    docs_url="/docs",
)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status_code, exc.code, exc.message, job_id=exc.job_id,
                           headers=exc.headers)


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return _error_response(500, "internal_error", f"internal error: {type(exc).__name__}; the "
                           "service is still up, see its log")


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg')}")
    # Echo scalar inputs only: a form-level error carries the whole form (with the upload).
    detail = [{k: v for k, v in e.items() if k != "ctx" and (
        k != "input" or isinstance(v, (str, int, float, bool, type(None))))}
        for e in exc.errors()]
    return _error_response(422, "invalid_request", "; ".join(problems), detail=detail)


@app.middleware("http")
async def _limit_upload(request: Request, call_next):
    # Refuse oversize uploads from the header, before reading the body.
    limit = getattr(request.app.state, "max_upload_bytes", None)
    length = request.headers.get("content-length")
    if limit and length and length.isdigit() and int(length) > limit + 64 * 1024:
        return _error_response(413, "upload_too_large",
                               f"the upload is {int(length):,} bytes; the limit is "
                               f"{limit:,} bytes ({limit / 1024 / 1024:.0f} MB)")
    return await call_next(request)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, esrgan: DeploymentHandle, flux: DeploymentHandle,
                 flux_coordinator: DeploymentHandle, imagen: DeploymentHandle,
                 settings: Settings):
        self.settings = settings
        self.esrgan = esrgan
        self.esrgan_stream = esrgan.options(stream=True)
        self.flux = flux
        self.flux_stream = flux_coordinator.options(stream=True)
        self.imagen = imagen
        self.imagen_stream = imagen.options(stream=True)
        self.store = JobStore(Storage(settings.resolved_storage_url), settings.stale_after_s)
        self.store.storage.check_usable()
        self.owner = uuid.uuid4().hex
        self._open: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_requested: set[str] = set()
        self._seconds_per_mp: dict[str, float] = {}
        self._last_health: dict[str, dict] = {}
        app.state.max_upload_bytes = settings.max_upload_bytes
        for engine in ENGINES:  # an empty queue is a value too, exported from the start
            self._queue_gauge(engine)
        self._stopping = False
        self._background = asyncio.get_event_loop().create_task(self._heartbeat_loop())

    # --- background ------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Keep our open jobs fresh; take over jobs whose owner (a dead service, or an Ingress
        replaced by a rollout) stopped heart-beating: resume FLUX jobs, fail the others."""
        last_sweep = 0.0
        while True:
            if time.monotonic() - last_sweep >= self.settings.stale_after_s / 2:
                last_sweep = time.monotonic()
                await self._sweep_abandoned()
            await asyncio.sleep(self.settings.heartbeat_s)
            for job in list(self._open.values()):
                if job.job_id not in self._open:  # finished or handed over meanwhile
                    continue
                job.heartbeat_at = time.time()
                try:
                    await asyncio.to_thread(self.store.save, job)
                except Exception:  # noqa: BLE001
                    logger.exception("heartbeat for %s failed", job.job_id)

    async def _sweep_abandoned(self) -> None:
        if self._stopping:  # a stopping replica takes nothing over
            return
        try:
            for job in await asyncio.to_thread(self.store.abandoned_jobs):
                if job.job_id in self._open:
                    continue
                if job.state == JobState.failed:
                    logger.warning("job %s was abandoned: reported failed", job.job_id)
                    await asyncio.to_thread(self.store.storage.delete,
                                            JobStore.input_key(job.job_id))
                elif job.resumable and job.engine == "flux":
                    logger.warning("resuming job %s from its finished tiles", job.job_id)
                    self._start(job, self.flux_stream.run)
        except Exception:  # noqa: BLE001
            logger.exception("abandoned-job sweep failed")

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica (a rollout, a shutdown). New requests
        already go to the replacement; our jobs in flight are handed over or finished."""
        self._stopping = True
        # FLUX jobs resume from their tiles: hand them over at once, marked stale so the
        # next Ingress's sweep takes them without waiting for the heartbeat to age.
        handed_over = [job for job in self._open.values() if job.resumable]
        tasks = [t for job in handed_over if (t := self._tasks.get(job.job_id))]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in handed_over:
            job.heartbeat_at = 0.0
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.save, job)
        plain = list(self._tasks.values())
        if plain:
            logger.info("draining %d job(s) for up to %.0f s", len(plain),
                        self.settings.ingress_drain_s)
            _, late = await asyncio.wait(plain, timeout=self.settings.ingress_drain_s)
            for task in late:  # reported failed (worker_lost) by _drive
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._background.cancel()

    async def _save(self, job: JobRecord) -> None:
        job.heartbeat_at = time.time()
        await asyncio.to_thread(self.store.save, job)

    # --- endpoints ---------------------------------------------------------------------------
    @app.post("/api/upscale/esrgan", response_model=UpscaleResponse, status_code=200,
              responses={202: {"model": UpscaleResponse}, 413: {"model": ErrorResponse},
                         415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
              summary="Upscale with an ESRGAN-family model (seconds)")
    async def upscale_esrgan(
        self,
        form: Annotated[EsrganUpscaleForm, Form()],
        file: Annotated[UploadFile | None, File(description="The image (PNG, JPEG, WebP, "
                                                "TIFF, BMP, GIF)")] = None,
        image: Annotated[UploadFile | None, File(description="Alias of `file`.")] = None,
        prefer: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        data, probe, plan = await self._intake(file or image, form.upscale_factor, form)
        model = await self._esrgan_model(form.model_name)
        job = self._new_job("esrgan", probe, plan, form, {
            "model": model["name"], "tile_size": form.tile_size or None,
            "use_fp16": form.use_fp16, "upscale_factor": form.upscale_factor})
        return await self._submit(job, data, self._wait_seconds(form.wait, prefer),
                                  self.esrgan_stream.run)

    @app.post("/api/upscale/flux", response_model=UpscaleResponse, status_code=202,
              responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
              summary="Ultimate SD Upscale with FLUX.1-dev (minutes; always asynchronous)")
    async def upscale_flux(
        self,
        form: Annotated[FluxUpscaleForm, Form()],
        file: Annotated[UploadFile | None, File(description="The image")] = None,
        image: Annotated[UploadFile | None, File(description="Alias of `file`.")] = None,
    ) -> JSONResponse:
        status = await self._flux_status()
        if not status.get("installed"):
            raise ApiError(503, "flux_not_installed", status.get("message") or
                           "FLUX is not available; run `upscaler models pull flux`")
        lo = self.settings.flux_min_tile_size
        if not lo <= form.tile_size <= 2048 or form.tile_size % 16:
            raise ApiError(422, "invalid_request", f"tile_size must be a multiple of 16 between "
                           f"{lo} and 2048 (got {form.tile_size})")
        data, probe, plan = await self._intake(file or image, form.upscale_factor, form)
        model = await self._esrgan_model(form.upscale_model)
        params = form.model_dump(exclude={"wait", "model"})
        params["upscale_model"] = model["name"]
        job = self._new_job("flux", probe, plan, form, params, resumable=True)
        return await self._submit(job, data, 0.0, self.flux_stream.run)

    @app.post("/api/upscale/imagen", response_model=UpscaleResponse, status_code=200,
              responses={202: {"model": UpscaleResponse}, 413: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                         502: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
              summary="Upscale with Imagen on Vertex AI (a cloud call)")
    async def upscale_imagen(
        self,
        form: Annotated[ImagenUpscaleForm, Form()],
        file: Annotated[UploadFile | None, File(description="The image")] = None,
        image: Annotated[UploadFile | None, File(description="Alias of `file`.")] = None,
        prefer: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        status = await self._engine_status("imagen", self.imagen)
        if not status.get("credentials_found"):
            raise ApiError(502, "credentials_missing",
                           "Imagen is not configured: no Google Cloud credentials. Set "
                           "UPSCALER_GCP_CREDENTIALS_FILE (or GOOGLE_APPLICATION_CREDENTIALS) to "
                           "a service-account key with roles/aiplatform.user")
        project = form.gcp_project_id or status.get("project")
        if not project:
            raise ApiError(502, "project_missing", "no Google Cloud project: send "
                           "gcp_project_id or set UPSCALER_GCP_PROJECT_ID")
        data, probe, plan = await self._intake(file or image, int(form.upscale_factor[1:]), form)
        has_print_size = form.target_width_inches or form.target_height_inches
        try:  # Vertex's documented limits, checked before any call
            model = imagen_model(form.model or self.settings.imagen_model)
            factor = choose_factor(model, probe.width, probe.height, plan.output_width,
                                   plan.output_height,
                                   None if has_print_size else int(form.upscale_factor[1:]))
            await asyncio.to_thread(request_image_bytes, data, probe.format, model)
        except ImagenError as exc:
            raise ApiError(exc.status_code, exc.code, exc.message) from None
        add_watermark = (self.settings.imagen_add_watermark if form.add_watermark is None
                         else form.add_watermark)
        job = self._new_job("imagen", probe, plan, form, {
            "model": model.name, "factor": factor, "gcp_project_id": project,
            "gcp_region": form.gcp_region, "add_watermark": add_watermark,
            "upscale_factor": form.upscale_factor})
        return await self._submit(job, data, self._wait_seconds(form.wait, prefer),
                                  self.imagen_stream.run)

    @app.get("/api/status/{job_id}", response_model=JobStatusResponse,
             responses={404: {"model": ErrorResponse}}, summary="Job status and progress")
    async def status(self, job_id: str) -> JobStatusResponse:
        return self._status(await self._get_job(job_id))

    @app.delete("/api/jobs/{job_id}", response_model=JobStatusResponse,
                responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
                summary="Cancel a queued or running job")
    async def cancel(self, job_id: str) -> JobStatusResponse:
        job = await self._get_job(job_id)
        if job.state.is_terminal:
            raise ApiError(409, "job_finished", f"job {job_id} is already {job.state.value}")
        task = self._tasks.get(job_id)
        if task is None:
            raise ApiError(409, "not_owner", "this job is run by another ingress replica; "
                           "retry the request")
        self._cancel_requested.add(job_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return self._status(job)

    @app.get("/api/results/{filename}", summary="Download a result",
             responses={200: {"content": {"image/png": {}, "image/tiff": {}}},
                        400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def result(self, filename: str) -> StreamingResponse:
        if not RESULT_NAME_RE.match(filename):
            raise ApiError(400, "invalid_filename",
                           "result names look like <32 hex digits>.png or .tiff, as given in "
                           "outputUrl")
        key = JobStore.result_key(filename)
        try:
            size = await asyncio.to_thread(self.store.storage.size, key)
        except FileNotFoundError:
            raise ApiError(404, "not_found", f"no result named {filename}") from None

        async def body() -> AsyncIterator[bytes]:
            f = await asyncio.to_thread(self.store.storage.open, key)
            try:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield chunk
            finally:
                f.close()

        return StreamingResponse(
            body(), media_type=MEDIA_TYPES[filename.rsplit(".", 1)[1]],
            headers={"Content-Length": str(size),
                     "Content-Disposition": f'inline; filename="{filename}"'})

    @app.get("/api/health", response_model=HealthResponse, summary="Service health",
             responses={503: {"model": HealthResponse,
                              "description": "degraded: an engine deployment does not answer"}})
    async def health(self) -> JSONResponse:
        engines: dict[str, Any] = {}
        try:
            engines["esrgan"] = await asyncio.wait_for(self.esrgan.health.remote(), 5)
            self._last_health["esrgan"] = engines["esrgan"]
        except Exception as exc:  # noqa: BLE001 - busy or down: report, don't fail health
            if "esrgan" in self._last_health and not isinstance(
                    _unwrap(exc), RayActorError):
                # Every replica slot is taken by image work: busy, not unhealthy.
                engines["esrgan"] = {**self._last_health["esrgan"], "state": "busy"}
            else:
                engines["esrgan"] = {"error": f"no answer: {type(_unwrap(exc)).__name__}"}
        flux = await self._flux_status()
        engines["flux"] = flux
        engines["imagen"] = await self._engine_status("imagen", self.imagen)
        up = [name for name, info in engines.items()
              if "error" not in info and info.get("installed", True)
              and info.get("configured", True)]
        gpu = next((i for i in engines.values() if i.get("gpu_available")), {})
        healthy = "error" not in engines["esrgan"] and "error" not in flux
        body = HealthResponse(
            status="healthy" if healthy else "degraded",
            gpu_available=bool(gpu.get("gpu_available", False)),
            gpu_name=gpu.get("gpu_name"), gpu_memory_free=gpu.get("gpu_memory_free"),
            models_loaded=up, queue_size=len(self._open), engines=engines)
        # 503 until the engines answer: container and load-balancer health checks wait for it.
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)

    @app.get("/", include_in_schema=False)
    async def root(self) -> RedirectResponse:
        return RedirectResponse("/docs")  # a person opening the bare address gets the docs

    @app.get("/api/models", summary="Installed super-resolution models")
    async def models(self) -> dict[str, Any]:
        return {"esrgan": await self.esrgan.list_models.remote()}

    # --- helpers -----------------------------------------------------------------------------
    async def _engine_status(self, name: str, handle: DeploymentHandle) -> dict[str, Any]:
        """An engine deployment's ``status()``; its last answer when every replica is busy."""
        try:
            status = await asyncio.wait_for(handle.status.remote(), 5)
            self._last_health[name] = status
            return status
        except Exception as exc:  # noqa: BLE001
            if name in self._last_health:
                return {**self._last_health[name], "state": "busy"}
            return {"installed": False, "error": f"no answer: {type(_unwrap(exc)).__name__}",
                    "message": f"the {name} deployment is not answering yet; retry shortly"}

    async def _flux_status(self) -> dict[str, Any]:
        return await self._engine_status("flux", self.flux)

    async def _intake(self, upload: UploadFile | None, factor: float,
                      form: CommonUpscaleForm) -> tuple[bytes, ImageProbe, OutputPlan]:
        """Every engine's first steps: the upload, validated, and its output size planned."""
        data = await self._read_upload(upload)
        probe = await self._probe(data)
        try:
            plan = calculate_output_dimensions(
                probe.width, probe.height, factor, form.target_dpi, form.target_width_inches,
                form.target_height_inches, form.crop_to_target)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from exc
        self._check_output_size(plan.output_width, plan.output_height)
        return data, probe, plan

    def _new_job(self, engine: str, probe: ImageProbe, plan: OutputPlan,
                 form: CommonUpscaleForm, params: dict[str, Any],
                 resumable: bool = False) -> JobRecord:
        common = {"output_format": form.output_format, "target_dpi": form.target_dpi,
                  "target_width_inches": form.target_width_inches,
                  "target_height_inches": form.target_height_inches,
                  "crop_to_target": form.crop_to_target}
        return JobRecord(
            engine=engine, owner=self.owner, resumable=resumable, input_format=probe.format,
            input_size=Size(width=probe.width, height=probe.height),
            output_size=Size(width=plan.final_width, height=plan.final_height),
            plan=plan.as_dict(), params={**common, **params})

    async def _read_upload(self, upload: UploadFile | None) -> bytes:
        if upload is None:
            raise ApiError(422, "missing_file",
                           "send the image as a multipart/form-data field named 'file'")
        limit = self.settings.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "upload_too_large",
                           f"the upload is larger than the limit of {limit:,} bytes")
        return data

    async def _probe(self, data: bytes):
        try:
            return await asyncio.to_thread(probe_image, data, self.settings.max_input_pixels)
        except ImageInputError as exc:
            raise ApiError(exc.status_code, exc.code, exc.message) from exc

    def _check_output_size(self, width: int, height: int) -> None:
        cap = self.settings.max_output_pixels
        if width * height > cap:
            raise ApiError(422, "output_too_large",
                           f"the output would be {width}x{height} = {width * height:,} pixels; "
                           f"the limit is {cap:,}. Lower upscale_factor, the print size or "
                           "target_dpi")

    async def _esrgan_model(self, name: str | None) -> dict[str, Any]:
        try:
            return await self.esrgan.model_info.remote(name)
        except Exception as exc:
            cause = _unwrap(exc)
            code = getattr(cause, "code", None)
            if code in ("unknown_model", "unsupported_model"):
                raise ApiError(422, code, cause.message) from None
            if code == "no_models":
                raise ApiError(503, code, cause.message) from None
            raise

    def _wait_seconds(self, field: float | None, prefer: str | None) -> float:
        if field is not None:
            return field
        if prefer:
            if "respond-async" in prefer.lower():
                return 0.0
            if match := PREFER_WAIT_RE.search(prefer):
                return min(float(match.group(1)), 600.0)
        return self.settings.sync_wait_s

    def _estimate(self, job: JobRecord) -> float:
        """Seconds until done: measured seconds per output megapixel, times the jobs ahead."""
        mp = job.output_size.width * job.output_size.height / 1e6
        device = str(self._last_health.get(job.engine, {}).get("device", "cpu"))
        initial = INITIAL_SECONDS_PER_MP[(job.engine,
                                          "cuda" if device.startswith("cuda") else "cpu")]
        rate = self._seconds_per_mp.get(job.engine, initial)
        ahead = sum(1 for j in self._open.values() if j.engine == job.engine) - 1
        return round(mp * rate * (1 + max(0, ahead)), 1)

    async def _submit(self, job: JobRecord, data: bytes, wait: float, remote) -> JSONResponse:
        await asyncio.to_thread(self.store.storage.write_bytes,
                                JobStore.input_key(job.job_id), data)
        await self._save(job)
        metrics.count(metrics.jobs_submitted, engine=job.engine)
        task = self._start(job, remote)
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        return self._submit_response(job)

    def _queue_gauge(self, engine: str) -> None:
        metrics.set_gauge(metrics.queue_size,
                          sum(1 for j in self._open.values() if j.engine == engine),
                          engine=engine)

    def _start(self, job: JobRecord, remote) -> asyncio.Task:
        job.owner = self.owner
        self._open[job.job_id] = job
        self._queue_gauge(job.engine)
        task = asyncio.get_running_loop().create_task(self._drive(job, remote))
        self._tasks[job.job_id] = task
        return task

    async def _drive(self, job: JobRecord, remote) -> None:
        """Run a job to its end, recording progress. Resumable jobs (FLUX) are re-run from
        their finished tiles when a replica dies, up to ``flux_max_resumes`` times."""
        left_open = False
        try:
            while True:
                try:
                    await self._stream(job, remote)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    cause = _unwrap(exc)
                    if (job.resumable and not getattr(cause, "code", None)
                            and job.resumes < self.settings.flux_max_resumes):
                        job.resumes += 1
                        logger.warning("job %s: %s; resuming (%d)", job.job_id,
                                       type(cause).__name__, job.resumes)
                        await self._save(job)
                        continue
                    raise
        except asyncio.CancelledError:
            if job.job_id in self._cancel_requested:
                job.state, job.finished_at = JobState.cancelled, job.finished_at or time.time()
                job.error, job.error_code = "cancelled", "cancelled"
            elif job.resumable:
                left_open = True  # the service is stopping: the next start resumes this job
            else:
                job.mark_failed("the service stopped before this job finished; submit the "
                                "image again", code="worker_lost")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must end in a failed job
            cause = _unwrap(exc)
            if getattr(cause, "code", None):
                job.mark_failed(cause.message, cause.code)
                job.error_status = getattr(cause, "status_code", None)
                job.retry_after = getattr(cause, "retry_after", None)
            else:
                logger.exception("job %s failed", job.job_id)
                job.mark_failed(f"the worker failed: {type(cause).__name__}: {cause}")
        finally:
            if not left_open and not job.state.is_terminal:
                job.mark_failed("the worker ended without a result")
            self._open.pop(job.job_id, None)
            self._tasks.pop(job.job_id, None)
            self._cancel_requested.discard(job.job_id)
            self._queue_gauge(job.engine)
            if not left_open:
                metrics.count(metrics.jobs_total, engine=job.engine, status=job.state.value)
                if job.processing_time is not None and job.state == JobState.completed:
                    metrics.observe(metrics.job_seconds, job.processing_time, engine=job.engine)
                await asyncio.shield(self._finish(job))

    async def _stream(self, job: JobRecord, remote) -> None:
        last_save = 0.0
        async for event in remote.remote(job.model_dump(mode="json")):
            kind = event["type"]
            if kind == "started":
                job.mark_processing()
                job.stats["replica"] = event.get("replica")
                await self._save(job)
            elif kind == "progress":
                job.progress = min(99.0, 100.0 * event["done"] / max(1, event["total"]))
                if time.monotonic() - last_save > 0.5:  # bound writes on object stores
                    last_save = time.monotonic()
                    await self._save(job)
            elif kind == "completed":
                job.mark_completed(event["result_key"], event["filename"], event["stats"])
                self._learn_rate(job)

    async def _finish(self, job: JobRecord) -> None:
        await self._save(job)
        await asyncio.to_thread(self.store.delete_work_files, job.job_id)

    def _learn_rate(self, job: JobRecord) -> None:
        mp = job.output_size.width * job.output_size.height / 1e6
        if job.processing_time and mp > 0:
            new = job.processing_time / mp
            old = self._seconds_per_mp.get(job.engine, new)
            self._seconds_per_mp[job.engine] = 0.7 * old + 0.3 * new

    async def _get_job(self, job_id: str) -> JobRecord:
        if job_id in self._open:
            return self._open[job_id]
        try:
            return await asyncio.to_thread(self.store.load, job_id)
        except JobNotFound:
            raise ApiError(404, "not_found", f"no job with id {job_id}") from None

    @staticmethod
    def _output_url(job: JobRecord) -> str | None:
        return f"/api/results/{job.result_filename}" if job.result_filename else None

    def _submit_response(self, job: JobRecord) -> JSONResponse:
        plan = job.plan
        body = UpscaleResponse(
            jobId=job.job_id, task_id=job.job_id, status=job.state.value,
            outputUrl=self._output_url(job), processingTime=job.processing_time,
            estimatedTime=None if job.state.is_terminal else self._estimate(job),
            inputSize=job.input_size, outputSize=job.output_size,
            statusUrl=f"/api/status/{job.job_id}", progress=int(job.progress),
            model=job.params.get("model"), scaleFactor=round(plan["scale_factor"], 6),
            dpi=plan["dpi"],
            cropInfo=CropGuidance(**plan["crop_info"]) if plan.get("crop_info") else None,
            cropApplied=plan.get("crop_applied", False), error=job.error)
        if job.state == JobState.completed:
            return JSONResponse(body.model_dump(mode="json"), status_code=200)
        if job.state == JobState.failed:
            user_error = job.error_code not in (None, "processing_failed", "worker_lost")
            err = ErrorResponse(error=job.error_code or "processing_failed",
                                message=job.error or "failed", jobId=job.job_id,
                                detail=body.model_dump(mode="json"))
            status = job.error_status or (422 if user_error else 500)
            headers = {"Retry-After": str(job.retry_after)} if job.retry_after else None
            return JSONResponse(err.model_dump(mode="json"), status_code=status,
                                headers=headers)
        return JSONResponse(body.model_dump(mode="json"), status_code=202,
                            headers={"Location": body.statusUrl})

    def _status(self, job: JobRecord) -> JobStatusResponse:
        queue_time = None
        if job.started_at:
            queue_time = round(job.started_at - job.created_at, 3)
        return JobStatusResponse(
            task_id=job.job_id, job_id=job.job_id, status=job.state.value,
            progress=int(job.progress), output_url=self._output_url(job), error=job.error,
            error_code=job.error_code, engine=job.engine, input_size=job.input_size,
            output_size=job.output_size, model=job.params.get("model"),
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            queue_time=queue_time, processing_time=job.processing_time, resumes=job.resumes,
            stats=job.stats)
