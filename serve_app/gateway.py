"""The engine deployments as the HTTP app sees them: typed calls over Ray Serve
DeploymentHandles, one place that knows which deployment serves which engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from serve_app.engine_wait import EngineWait, Placement, engine_wait
from upscaler.compute.engines.models import ModelInfo
from upscaler.domain.contracts import EngineStatus, ModelList
from upscaler.domain.jobs import Engine, JobEvent, JobSpec, JobWork
from upscaler.domain.quotas import KeyQuota, RateState, UsageFigures
from upscaler.ray_support import node_resources, serve_replica_counts, unwrap

T = TypeVar("T")


class LocalModels(Protocol):
    """The ESRGAN model questions answered in this process (deployments.esrgan)."""

    def model_info(self, name: str | None) -> ModelInfo: ...
    def list_models(self) -> ModelList: ...


STATUS_TIMEOUT_S = 5.0
REPLICAS_FRESH_S = 3.0  # Serve's replica counts, asked of its controller at most this often
STATUS_FRESH_S = 2.0  # an engine's status this recent is answered without asking again
MODELS_FRESH_S = 10.0  # the ESRGAN model list, likewise (model files change rarely)


@dataclass
class _Cached(Generic[T]):
    value: T
    at: float
    refreshing: asyncio.Task | None = None


class Polled(Generic[T]):
    """A blocking question to Ray (run in a thread), answered from its last answer and asked
    again in the background once that is ``fresh_s`` old; None when it could not be asked
    (outside Serve, or the controller busy)."""

    def __init__(self, ask: Callable[[], T], fresh_s: float = REPLICAS_FRESH_S):
        self._ask, self._fresh_s = ask, fresh_s
        self._last: _Cached[T | None] | None = None

    async def get(self, fresh: bool = False) -> T | None:
        """The last answer; ``fresh``: asked again now when it is old (before a question that
        must not go to a deployment with no replica)."""
        if self._last is None or (fresh and time.monotonic() - self._last.at > self._fresh_s):
            self._last = _Cached(await self._answer(), time.monotonic())
        elif (time.monotonic() - self._last.at > self._fresh_s
              and self._last.refreshing is None):
            self._last.refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._last.value

    async def _answer(self) -> T | None:
        try:
            return await asyncio.to_thread(self._ask)
        except Exception:  # noqa: BLE001 - outside Serve, or the controller is busy
            return None

    async def _refresh(self) -> None:
        self._last = _Cached(await self._answer(), time.monotonic())


class ClusterView:
    """Serve's running replicas by deployment, and each live node's total resources."""

    def __init__(self, replicas: Callable[[], dict[str, int]],
                 nodes: Callable[[], list[dict[str, float]]]):
        self.replicas = Polled(replicas)
        self.nodes = Polled(nodes)


class EngineGateway:
    """Job streams go straight to the deployments. Questions (status, models) are answered
    from what the deployments said last, refreshed in the background once it is a few seconds
    old: a replica whose every slot holds image work then never makes a request (health, an
    upload's model check) wait for it."""

    def __init__(self, esrgan: DeploymentHandle, runs: Mapping[Engine, DeploymentHandle],
                 statuses: Mapping[Engine, DeploymentHandle],
                 scales_to_zero: Mapping[Engine, str] | None = None,
                 placements: Mapping[Engine, Placement] | None = None,
                 gpu_node_start_s: float = 0.0,
                 local_models: LocalModels | None = None,
                 cluster: ClusterView | None = None,
                 status_deployments: Mapping[Engine, str] | None = None):
        """``esrgan`` answers the model questions; each engine's jobs stream from its ``runs``
        handle and its ``status()`` is its ``statuses`` handle's (serve_app/engine_specs.py);
        ``scales_to_zero``: the deployment an idle engine may have no replica of, and
        ``placements`` where such a one's replicas run (what its jobs wait for meanwhile);
        ``local_models``: the ESRGAN model list as this node's models folder has it, answered
        while ESRGAN has no replica (asking would start one); ``cluster``: Serve's replica
        counts and the nodes, as Ray tells them (tests give their own);
        ``status_deployments``: the deployment behind each ``statuses`` handle, whose running
        replicas tell a busy engine (no answer in time) from a lost one (none running)."""
        self.esrgan = esrgan
        self._runs = {engine: handle.options(stream=True) for engine, handle in runs.items()}
        self._statuses = dict(statuses)
        self._scales_to_zero = dict(scales_to_zero or {})
        self._placements = dict(placements or {})
        self._gpu_node_start_s = gpu_node_start_s
        self._local_models = local_models
        self.cluster = cluster or ClusterView(serve_replica_counts, node_resources)
        self._status_deployments = dict(status_deployments or {})
        self._status: dict[Engine, _Cached[EngineStatus]] = {}
        self._models: _Cached[ModelList] | None = None
        self._models_asked: asyncio.Task[ModelList] | None = None

    def run(self, spec: JobSpec, data: bytes | None = None) -> AsyncIterator[JobEvent]:
        return self._runs[spec.engine].run.remote(spec, data)

    # --- models --------------------------------------------------------------------------
    async def list_models(self) -> ModelList:
        stale = self._models is None or time.monotonic() - self._models.at > MODELS_FRESH_S
        if stale and await self._esrgan_at_zero():  # the last list, or this node's
            if self._models is None:
                assert self._local_models is not None
                self._models = _Cached(await asyncio.to_thread(self._local_models.list_models),
                                       time.monotonic())
            return self._models.value
        if self._models is None:
            return await self._first_list()
        if stale:
            self._ask_models()  # in the background: the last list answers meanwhile
        return self._models.value

    async def _first_list(self) -> ModelList:
        """This replica's first list: ESRGAN's, unless every slot it has holds image work for
        longer than a status question may wait. Then this node's list answers meanwhile (as
        while ESRGAN is at zero) and ESRGAN's replaces it when it comes, so no upload waits
        behind another job for its model check."""
        asked = self._ask_models()
        if self._local_models is None:
            return await asyncio.shield(asked)
        try:
            return await asyncio.wait_for(asyncio.shield(asked), STATUS_TIMEOUT_S)
        except TimeoutError:
            return await asyncio.to_thread(self._local_models.list_models)

    async def _esrgan_at_zero(self) -> bool:
        """Before a model question would go to ESRGAN: whether it has no replica to answer
        (asking would start one, and its GPU node, and wait for them)."""
        return self._local_models is not None and await self.scaled_to_zero(Engine.esrgan,
                                                                             fresh=True)

    def _ask_models(self) -> asyncio.Task[ModelList]:
        """The one question for ESRGAN's list in flight (asked now if none is): its answer
        replaces the list kept; its failure is raised to whoever awaits it, and a refresh
        nobody awaits keeps the last list (asked again later)."""
        if self._models_asked is None:
            async def ask() -> ModelList:
                try:
                    models = await self.esrgan.list_models.remote()
                finally:
                    self._models_asked = None
                self._models = _Cached(models, time.monotonic())
                return models

            self._models_asked = asyncio.get_running_loop().create_task(ask())
            self._models_asked.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._models_asked

    async def model_info(self, name: str | None) -> ModelInfo:
        """The ESRGAN model ``name`` (None: the default). A name the list does not hold (new,
        unknown, unloadable, or no model installed) is asked of a replica, which raises
        UnknownModel, UnsupportedModel or ServiceUnavailable; with no replica running, the
        list is this node's, and a name it lacks is unknown."""
        models = await self.list_models()
        if (listed := models.find(name)) is not None:
            return listed
        if await self._esrgan_at_zero():
            assert self._local_models is not None
            return await asyncio.to_thread(self._local_models.model_info, name)
        info = await self.esrgan.model_info.remote(name)
        self._ask_models()  # it exists after all: the list is behind
        return info

    # --- status --------------------------------------------------------------------------
    async def running_replicas(self, deployment: str, fresh: bool = False) -> int | None:
        """Running replicas of one of this application's deployments, as Serve's controller
        counts them; None when it cannot say. Like status: once known, the last count is
        answered and refreshed in the background when a few seconds old, so no upload waits
        on the controller (``fresh``: unless it is about to ask that deployment)."""
        counts = await self.cluster.replicas.get(fresh)
        return None if counts is None else counts.get(deployment, 0)

    async def scaled_to_zero(self, engine: Engine, fresh: bool = False) -> bool:
        """No replica runs this engine now (autoscaled to zero): the next job starts one.
        ``fresh`` before asking it: a question would start a replica (and its GPU node)."""
        deployment = self._scales_to_zero.get(engine)
        return deployment is not None and await self.running_replicas(deployment, fresh) == 0

    async def engine_wait(self, engine: Engine) -> EngineWait | None:
        """What a job of ``engine`` waits for before its work can start (None: a replica runs
        it): a GPU node (no live node can run a replica: the autoscaler launches one) or the
        engine's start on a node that is up."""
        if not await self.scaled_to_zero(engine):
            return None
        placement = self._placements.get(engine, Placement(frozenset(), 0.0))
        return engine_wait(placement, await self.cluster.nodes.get(), self._gpu_node_start_s)

    async def status(self, engine: Engine) -> EngineStatus:
        """An engine's status: the last answer when recent, else asked again (in the
        background when there is an answer to give meanwhile). An engine scaled to zero is
        not asked: a question would start a replica (and hold a GPU) for nothing."""
        cached = self._status.get(engine)
        asking = cached is None or time.monotonic() - cached.at > STATUS_FRESH_S
        if await self.scaled_to_zero(engine, fresh=asking):
            # Installed as a replica last said (files rarely go); a replica started for a job
            # without them fails it with the command to run.
            last = self._status.get(engine)
            installed = last is None or last.value.installed is not False
            wait = await self.engine_wait(engine)
            then = f" ({wait.reason}, about {wait.seconds:.0f} s)" if wait else ""
            return EngineStatus(installed=installed, replicas=0, state="scaled_to_zero",
                                message=f"no {engine.value} replica is running (scaled to "
                                f"zero when idle); the next job starts one{then}")
        if cached is None:
            return await self._ask_status(engine)
        if asking and cached.refreshing is None:
            cached.refreshing = asyncio.get_running_loop().create_task(
                self._ask_status(engine))
        return cached.value

    async def _ask_status(self, engine: Engine) -> EngineStatus:
        """Ask the deployment. No answer in time from a live replica means every slot holds
        image work: its last answer, marked busy. A dead replica, or none running, is an
        error until Serve has replaced it."""
        last = self._status.get(engine)
        try:
            status: EngineStatus = await asyncio.wait_for(
                self._statuses[engine].status.remote(), STATUS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - busy or down: report it, never fail health
            cause = unwrap(exc)
            if (last is not None and last.value.answered
                    and not isinstance(cause, RayActorError)
                    and await self._has_replica(engine) is not False):
                status = last.value.model_copy(update={"state": "busy"})
            else:
                status = EngineStatus(installed=False,
                                      error=f"no answer: {type(cause).__name__}",
                                      message=f"the {engine.value} deployment is not "
                                      "answering yet; retry shortly")
        self._status[engine] = _Cached(status, time.monotonic())
        return status

    async def _has_replica(self, engine: Engine) -> bool | None:
        """Whether Serve counts a running replica of the engine's deployment now (None: it
        cannot say). A lost node's replica is gone from the count once Serve's controller
        sees it dead; the router then holds the question rather than failing it, so the
        count, not the error, tells a lost engine from a busy one."""
        deployment = self._status_deployments.get(engine)
        if deployment is None:
            return None
        running = await self.running_replicas(deployment, fresh=True)
        return None if running is None else running > 0

    def device(self, engine: Engine) -> str | None:
        """The device an engine last said it runs on (None before it answered)."""
        cached = self._status.get(engine)
        return None if cached is None else cached.value.device


class QuotaClient:
    """The quota keeper (one replica for every Ingress), as typed calls."""

    def __init__(self, keeper: DeploymentHandle):
        self.keeper = keeper

    async def hit(self, bucket: str, per_minute: int) -> RateState:
        return await self.keeper.hit.remote(bucket, per_minute)

    async def admit(self, bucket: str, job_id: str, engine: str, work: JobWork,
                    quota: KeyQuota, max_open_per_engine: int, metered: bool) -> None:
        await self.keeper.admit.remote(bucket, job_id, engine, work, quota,
                                       max_open_per_engine, metered)

    async def release(self, bucket: str, job_id: str, engine: str) -> None:
        await self.keeper.release.remote(bucket, job_id, engine)

    async def stored(self, bucket: str, job_id: str, nbytes: int) -> None:
        await self.keeper.stored.remote(bucket, job_id, nbytes)

    async def unstored(self, bucket: str, job_id: str) -> None:
        await self.keeper.unstored.remote(bucket, job_id)

    async def figures(self, bucket: str, quota: KeyQuota) -> UsageFigures:
        return await self.keeper.figures.remote(bucket, quota)
