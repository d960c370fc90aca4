"""GET /api/usage: the calling key's quotas, what it used of each, and its limits."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends

from serve_app.access import CallerDep, key_quota, rate_limit
from serve_app.deps import QuotasDep, SettingsDep
from serve_app.openapi_docs import error_responses
from serve_app.schemas import UsageFigure, UsageResponse
from upscaler.domain.quotas import Allowance

router = APIRouter(prefix="/api", tags=["jobs"], dependencies=[Depends(rate_limit)])


@router.get("/usage", response_model=UsageResponse, responses=error_responses(401, 403, 429, 503),
            summary="This key's usage today and its limits",
            description="Counted as jobs are submitted (what each will compute) and as results "
            "are kept and deleted, by the one quota keeper every Ingress replica asks.")
async def usage(settings: SettingsDep, quotas: QuotasDep, who: CallerDep) -> UsageResponse:
    figures = await quotas.figures(who.bucket, key_quota(settings, who))

    def shown(allowance: Allowance) -> UsageFigure:
        return UsageFigure(**dataclasses.asdict(allowance))

    return UsageResponse(
        key_id=who.key_id, name=who.name, metered=who.key_id is not None,
        megapixels_today=shown(figures.megapixels),
        flux_megapixel_steps_today=shown(figures.flux_megapixel_steps),
        jobs_today=shown(figures.jobs), open_jobs=shown(figures.open_jobs),
        stored_bytes=shown(figures.stored_bytes),
        requests_per_minute=figures.requests_per_minute, resets_in_s=figures.resets_in_s)
