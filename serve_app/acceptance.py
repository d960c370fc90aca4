"""Taking a built job in, the same for every engine: its retention, the Idempotency-Key, the
webhook, the quotas, then the runner; the answer with its estimate."""

# No `from __future__ import annotations`: FastAPI reads Acceptance's parameters as
# dependencies, and a class's string annotations cannot be resolved.
import asyncio

from fastapi.responses import JSONResponse

from serve_app.access import admit, retention_s
from serve_app.deps import (
    EnginesDep,
    IdempotencyDep,
    Intake,
    KeysDep,
    OutlookDep,
    QuotasDep,
    RunnerDep,
    SettingsDep,
    StoreDep,
    WebhooksDep,
)
from serve_app.idempotency import Claim, claim, replay_of
from serve_app.presenters import upscale_response
from serve_app.webhook_submit import subscription
from upscaler.domain.conditional import WriteConflict
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import JobRecord
from upscaler.domain.keys import Caller, quota_bucket


class Acceptance:
    """A FastAPI dependency of the upscale routes: what accepting a job uses."""

    def __init__(self, settings: SettingsDep, store: StoreDep, engines: EnginesDep,
                 runner: RunnerDep, outlook: OutlookDep, quotas: QuotasDep,
                 idempotency: IdempotencyDep, webhooks: WebhooksDep, keys: KeysDep):
        self.settings, self.store, self.engines, self.outlook = settings, store, engines, outlook
        self.runner = runner
        self.quotas, self.idempotency, self.webhooks, self.keys = (quotas, idempotency,
                                                                   webhooks, keys)

    async def __call__(self, who: Caller, job: JobRecord, request: Intake, wait: float,
                       idempotency_key: str | None) -> JSONResponse:
        """200 when the job finished within ``wait``, else 202 with its status URL."""
        job.retention_s = retention_s(self.settings, who)
        first: Claim | None = None
        if idempotency_key is not None:  # a repeat is answered from the first request's job
            found = await claim(self.idempotency, self.store, self.outlook, who,
                                idempotency_key, job.engine.value, request, job,
                                job.retention_s, wait)
            if isinstance(found, JSONResponse):
                return found
            first = found
        try:
            job.webhooks = await subscription(self.settings, request.form, self.webhooks,
                                              self.keys, who)
            await admit(self.settings, self.quotas, who, job)  # before anything is stored
            # Asked before the job starts one: an engine at zero replicas adds its start (and
            # its GPU node's, when none is up).
            held = await self.engines.engine_wait(job.engine)
            try:
                job = await self.runner.submit(job, request.take_data(), wait)
            except WriteConflict:
                if first is None or not first.taken_over:
                    raise
                # The first request was only slow and stored this job id first: its answer,
                # and its quota reservation (the same job id) is left to it.
                return await self._answer_stored_first(job)
            except BaseException:
                await self.quotas.release(quota_bucket(who.key_id), job.job_id,
                                          job.engine.value)
                raise
        except BaseException:
            if first is not None:
                await first.failed(job)
            raise
        estimate = self.outlook.estimate(job, self.outlook.open_count(job.engine) - 1)
        response = upscale_response(job, estimate + (held.seconds if held else 0.0))
        if first is not None:
            await first.accepted(job, response.status_code)
        return response

    async def _answer_stored_first(self, job: JobRecord) -> JSONResponse:
        first = await self.runner.get(job.job_id)
        if first.state.is_terminal:
            # Its upload went with its end: the copy this request wrote must not stay.
            await asyncio.to_thread(self.store.storage.delete, JobStore.input_key(job.job_id))
        return replay_of(self.outlook, first, None)
