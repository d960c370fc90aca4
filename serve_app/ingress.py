"""The Ingress deployment: one replica's services (job runner, engine gateway, estimates)
around the FastAPI app that ``serve_app.api.create_app`` builds for it. It never touches a
model; everything blocking runs in threads, so it stays responsive while replicas work.

When Serve stops the replica (a rollout, a shutdown), the app's lifespan stops the runner: new
requests already go to the replacement, and the jobs in flight are handed over or finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import open_job_store
from deployments.esrgan import ModelQuestions
from serve_app.api import create_app
from serve_app.deps import Services
from serve_app.engine_specs import ENGINES, QUOTAS, initial_rates
from serve_app.estimates import Estimator
from serve_app.gateway import EngineGateway, QuotaClient
from serve_app.limits import UploadSlots
from serve_app.runner import JobRunner, RunnerTimings
from serve_app.submissions import MAX_PREFER_WAIT_S
from serve_app.webhooks import WebhookSender
from upscaler import ray_support
from upscaler.compute.budget import MemoryBudget
from upscaler.compute.decode_worker import DecodeWorkers
from upscaler.domain.idempotency import IdempotencyKeys
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import JobRecord, JobState
from upscaler.domain.keys import KeyStore, quota_bucket
from upscaler.domain.retention import RetentionSweeper
from upscaler.ray_support import RunnerMetrics
from upscaler.settings import Settings


def runner_timings(settings: Settings) -> RunnerTimings:
    return RunnerTimings(heartbeat_s=settings.heartbeat_s, stale_after_s=settings.stale_after_s,
                         drain_s=settings.ingress_drain_s, max_resumes=settings.flux_max_resumes,
                         max_attempts=settings.job_max_attempts)


def engine_gateway(settings: Settings, handles: Mapping[str, Any]) -> EngineGateway:
    """The engines as ENGINES describes them, over handles to the graph's deployments."""
    placements = {spec.engine: placement for spec in ENGINES
                  if (placement := spec.placement(settings)) is not None}
    return EngineGateway(
        handles["ESRGAN"], {spec.engine: handles[spec.runs_jobs] for spec in ENGINES},
        {spec.engine: handles[spec.status] for spec in ENGINES},
        {spec.engine: spec.scales_to_zero for spec in ENGINES if spec.engine in placements
         and spec.scales_to_zero}, placements=placements,
        gpu_node_start_s=settings.gpu_node_start_s, local_models=ModelQuestions(settings),
        status_deployments={spec.engine: spec.status for spec in ENGINES})


def build_services(settings: Settings, handles: Mapping[str, Any]) -> Services:
    """The services of an Ingress around handles to the deployments, by name (in tests, local
    stand-ins with the same ``.method.remote()`` calls)."""
    store = open_job_store(settings)
    store.storage.check_usable()
    engines = engine_gateway(settings, handles)
    estimator = Estimator(initial_rates())
    quotas = QuotaClient(handles[QUOTAS.name])

    async def job_ended(job: JobRecord) -> None:
        bucket = quota_bucket(job.api_key_id)
        await quotas.release(bucket, job.job_id, job.engine.value)
        if job.state == JobState.completed:
            estimator.learn(job)
            # Its bytes are the key's now (keys off: no one's, nothing metered or written).
            if job.api_key_id and job.result_key and not job.result_deleted:
                await quotas.stored(bucket, job.job_id, await result_bytes(store, job))

    keys = KeyStore(settings.resolved_keys_file)
    keys.tighten()  # a local keys file made owner-only, whoever made it
    webhooks = WebhookSender(settings, store, keys)
    runner = JobRunner(store, engines.run, runner_timings(settings), on_ended=job_ended,
                       webhooks=webhooks, worker_lost=ray_support.worker_died,
                       metrics=RunnerMetrics())
    webhooks.live = runner.live
    return Services(settings, store, runner, engines, estimator, keys, quotas,
                    UploadSlots(settings.max_concurrent_uploads,
                                settings.max_concurrent_uploads_per_key),
                    MemoryBudget(settings.decode_budget_bytes),
                    IdempotencyKeys(store.storage, idempotency_accepting_s(settings)),
                    webhooks,
                    RetentionSweeper(store, settings.orphan_grace_s,
                                     settings.retention_sweep_batch),
                    decoder=DecodeWorkers(settings.decode_workers))


async def result_bytes(store: JobStore, job: JobRecord) -> int:
    """A completed job's result size: as its engine reported it, else as stored."""
    reported = job.stats.get("output_bytes")
    if isinstance(reported, int):
        return reported
    assert job.result_key is not None
    return await asyncio.to_thread(store.storage.size, job.result_key)


def idempotency_accepting_s(settings: Settings) -> float:
    """How long a first request may take to be accepted (its upload, then its synchronous
    wait); a key "accepting" for longer belongs to a request that died."""
    return settings.upload_timeout_s + MAX_PREFER_WAIT_S + 60


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, handles: dict[str, DeploymentHandle], settings: Settings):
        self.services = build_services(settings, handles)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.services)
