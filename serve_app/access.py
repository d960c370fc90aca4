"""Who may call, and how much: API keys (when ``auth`` is ``keys``), the per-key rate limit
and quotas, job ownership. Shared by the routes as FastAPI dependencies; the key itself is
checked from the headers, before any body is read, by serve_app/gate.py."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import Headers

from serve_app.deps import QuotasDep, SettingsDep
from serve_app.gateway import QuotaClient
from upscaler.domain.jobs import JobRecord
from upscaler.domain.keys import Caller, quota_bucket
from upscaler.domain.quotas import KeyQuota
from upscaler.errors import Forbidden, NotFound
from upscaler.settings import Settings

BEARER = "bearer "
logger = logging.getLogger("ray.serve")
# What serve_app/gate.py decided from a request's headers, in ``scope["state"]`` (read as
# ``request.state``): the caller, and the RateLimit headers of a request it charged already.
CALLER_STATE = "caller"
RATE_LIMIT_STATE = "rate_limit_headers"


def presented_key(headers: Headers) -> str | None:
    header = headers.get("authorization", "")
    if header[:len(BEARER)].lower() == BEARER:
        return header[len(BEARER):].strip()
    return headers.get("x-api-key")


# Both async: FastAPI runs a plain `def` dependency in a thread, a hop per request for a read.
async def optional_caller(request: Request) -> Caller | None:
    """The caller, or None when keys are on and no valid key came (health's liveness)."""
    return request.scope.get("state", {}).get(CALLER_STATE)


async def caller(request: Request) -> Caller:
    """The caller the gate found: it lets a request reach a route that depends on this only
    with a valid key (401 without one, 403 with a revoked one), or with keys off."""
    who = await optional_caller(request)
    assert who is not None, f"the gate let {request.url.path} through without a caller"
    return who


CallerDep = Annotated[Caller, Depends(caller)]


async def charge_rate_limit(settings: Settings, quotas: QuotaClient,
                            who: Caller) -> dict[str, str]:
    """One token of the caller's bucket (RateLimited past it); the RateLimit headers."""
    per_minute = who.limits.rate_limit_per_minute or settings.rate_limit_per_minute
    return (await quotas.hit(who.bucket, per_minute)).headers()


async def rate_limit(request: Request, settings: SettingsDep, quotas: QuotasDep,
                     who: CallerDep) -> None:
    """One token of the caller's bucket per request (keys on), unless the gate took it
    already (uploads); the RateLimit headers of the answer say what is left."""
    if who.key_id is None or RATE_LIMIT_STATE in request.scope.get("state", {}):
        return
    request.state.rate_limit_headers = await charge_rate_limit(settings, quotas, who)


def key_quota(settings: Settings, who: Caller) -> KeyQuota:
    s, limits = settings, who.limits
    stored_mb = limits.max_stored_mb or s.max_stored_mb_per_key
    return KeyQuota(per_minute=limits.rate_limit_per_minute or s.rate_limit_per_minute,
                    max_open_jobs=limits.max_open_jobs or s.max_open_jobs_per_key,
                    output_mp_per_day=limits.max_output_mp_per_day or s.max_output_mp_per_day,
                    flux_mp_steps_per_day=(limits.max_flux_mp_steps_per_day
                                           or s.max_flux_mp_steps_per_day),
                    jobs_per_day=limits.max_jobs_per_day or s.max_jobs_per_day,
                    stored_bytes=int(stored_mb * 2**20))


def retention_s(settings: Settings, who: Caller) -> float:
    """How long the caller's finished jobs are kept (the key's setting, else the server's)."""
    return who.limits.result_ttl_s or settings.result_ttl_s


async def admit(settings: Settings, quotas: QuotaClient, who: Caller, job: JobRecord) -> None:
    """Count the job against its engine's cap and the caller's quotas before anything is
    stored: what it will compute (``job.work``, from the engines' own plans), and one job;
    raises 503 (engine full) or 429 (a quota), with Retry-After."""
    job.api_key_id = who.key_id
    assert job.work is not None, "a job is admitted with its work planned"
    await quotas.admit(who.bucket, job.job_id, job.engine.value, job.work,
                       key_quota(settings, who), settings.max_open_jobs, who.key_id is not None)


async def result_gone(quotas: QuotaClient, job: JobRecord) -> None:
    """A job's result was deleted: its bytes are no longer its key's. Best effort: were the
    keeper not to answer, the retention sweep tells it again when the record expires."""
    if job.api_key_id is None:
        return  # keys off: its bytes were never counted
    try:
        await quotas.unstored(quota_bucket(job.api_key_id), job.job_id)
    except Exception:  # noqa: BLE001 - the deletion stands either way
        logger.exception("job %s: its result's bytes not released", job.job_id)


def check_owner(settings: Settings, who: Caller, job: JobRecord) -> JobRecord:
    """With keys on, a job and its result belong to the key that made it: to any other key
    they do not exist (404, the same answer as an unknown id)."""
    if settings.auth == "keys" and job.api_key_id != who.key_id:
        raise NotFound(f"no job with id {job.job_id}")
    return job


def allowed_projects(settings: Settings, who: Caller, server_project: str | None) -> set[str]:
    return {p for p in (server_project, *settings.gcp_allowed_projects,
                        *who.limits.gcp_projects) if p}


def check_project(settings: Settings, who: Caller, asked: str | None,
                  server_project: str | None) -> None:
    """A request may name only the server's Google Cloud project or one allowed to it."""
    if asked and asked not in allowed_projects(settings, who, server_project):
        raise Forbidden(f"gcp_project_id {asked!r} is not allowed here; ask the operator to "
                        "allow it (UPSCALER_GCP_ALLOWED_PROJECTS or the key's projects)",
                        code="project_not_allowed")


def rate_limit_headers(request: Request) -> dict[str, Any]:
    return request.scope.get("state", {}).get(RATE_LIMIT_STATE) or {}
