"""Every engine described once: its form, job parameters and job builder, the deployments it
adds to the graph with their options, its first estimate and its route's docs. The upscale
routes (routes/upscale.py), the graph (app.py), the Ingress's view of the engines (ingress.py)
and tests/local_graph.py are all made from ``ENGINES``; tests/test_deploy_configs.py checks
the checked-in Serve configs against it. A new engine: one entry, its engine module
(upscaler/compute/engines/), its deployment (deployments/)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve import Deployment

from deployments.esrgan import EsrganDeployment
from deployments.flux import FluxCoordinator, FluxDeployment
from deployments.imagen import ImagenDeployment
from deployments.quotas import QuotaKeeper
from serve_app import deploy_options as opt
from serve_app.deps import Intake
from serve_app.engine_wait import Placement
from serve_app.estimates import InitialRate
from serve_app.forms import (
    CommonUpscaleForm,
    EsrganUpscaleForm,
    FluxUpscaleForm,
    ImagenUpscaleForm,
)
from serve_app.gateway import EngineGateway
from serve_app.submissions import esrgan_job, flux_job, imagen_job, require_flux
from upscaler.domain.jobs import Engine, EsrganParams, FluxParams, ImagenParams, JobRecord
from upscaler.domain.keys import Caller
from upscaler.settings import Settings

JobBuilder = Callable[[Settings, EngineGateway, Caller, Intake[Any]], Awaitable[JobRecord]]


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of the graph, bound with the settings and then the handles of the
    deployments it ``calls``; the Ingress gets every one's handle by ``name``."""

    name: str  # Serve's name: the configs' `deployments:` entries
    deployment: Deployment | None  # None: the Ingress, which app.py binds around the rest
    options: Callable[[Settings], dict[str, Any]]
    calls: tuple[str, ...] = ()
    # Whether it reserves GPUs where there are any (a config with GPUs must give it some).
    gpu: bool = False
    # Options a config may restate but not change, and options a config may not set (the
    # builder's value is checked against other settings).
    fixed: tuple[str, ...] = ()
    builder_only: tuple[str, ...] = ()

    def deploy_options(self, settings: Settings, cpu_nodes_declared: bool) -> dict[str, Any]:
        """Its options as deployed: on a cluster whose CPU nodes declare themselves, all but
        the GPU engines are held to them (on a laptop without the resource, anywhere)."""
        options = self.options(settings)
        return opt.on_cpu_nodes(options) if cpu_nodes_declared and not self.gpu else options


@dataclass(frozen=True)
class EngineSpec:
    """One engine: what its route takes and builds, and the deployments that run it."""

    engine: Engine
    form: type[CommonUpscaleForm]
    params: type[Any]  # the JobParams member its jobs carry
    build_job: JobBuilder
    deployments: tuple[DeploymentSpec, ...]
    runs_jobs: str  # the deployment whose `run` streams its jobs' events
    status: str  # the deployment whose `status()` answers for it
    initial_rate: InitialRate  # seconds per megapixel before any was measured
    summary: str  # its route's one line in the docs
    # Answers within the request's wait (200) or always 202 at once, polled.
    synchronous: bool = True
    # Dependencies checked before its upload is read (FLUX: installed at all).
    prechecks: tuple[Callable[..., Awaitable[None]], ...] = ()
    extra_errors: tuple[int, ...] = ()  # answers beyond every upload's (a cloud's)
    critical: bool = True  # the service is degraded while it does not answer
    # Computes in passes of the ESRGAN model (the plan's computed pixels follow its scale).
    model_passes: bool = False
    scales_to_zero: str | None = None  # the deployment an idle engine may have none of
    # Whether the settings let it go to zero (None: always, as configs may set min 0), and
    # the seconds a replica of it takes to start: what a job waits while it has none.
    zero_when: Callable[[Settings], bool] | None = None
    cold_start_s: Callable[[Settings], float] = lambda settings: 0.0

    def placement(self, settings: Settings) -> Placement | None:
        """Where its scaled-to-zero deployment runs and how long it takes to start there."""
        if self.scales_to_zero is None or (self.zero_when and not self.zero_when(settings)):
            return None
        [deployment] = [d for d in self.deployments if d.name == self.scales_to_zero]
        return Placement.of(deployment.options(settings)["ray_actor_options"],
                            self.cold_start_s(settings))


ESRGAN = DeploymentSpec("ESRGAN", EsrganDeployment, opt.esrgan_options, gpu=True)
FLUX = DeploymentSpec("FLUX", FluxDeployment, opt.flux_options, gpu=True,
                      fixed=("max_ongoing_requests", "request_router_config"))

ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec(
        Engine.esrgan, EsrganUpscaleForm, EsrganParams, esrgan_job, (ESRGAN,),
        runs_jobs="ESRGAN", status="ESRGAN",
        initial_rate=InitialRate(cpu=8.0, cuda=0.3, per_job=0.2),
        summary="Upscale with an ESRGAN-family model (seconds)", model_passes=True,
        # Only where its settings say so: elsewhere no replica means its node was lost.
        scales_to_zero="ESRGAN", zero_when=lambda s: s.esrgan_min_replicas == 0,
        cold_start_s=lambda s: s.esrgan_cold_start_s),
    EngineSpec(
        Engine.flux, FluxUpscaleForm, FluxParams, flux_job, (
            FLUX,
            # Runs each job: tiles to the FLUX replicas, the ESRGAN pre-upscale to ESRGAN.
            DeploymentSpec("FluxCoordinator", FluxCoordinator, opt.flux_coordinator_options,
                           calls=("ESRGAN", "FLUX"))),
        runs_jobs="FluxCoordinator", status="FLUX",
        initial_rate=InitialRate(cpu=600.0, cuda=8.0, per_job=2.0),
        summary="Ultimate SD Upscale with FLUX.1-dev (minutes; always asynchronous)",
        synchronous=False, prechecks=(require_flux,), model_passes=True,
        scales_to_zero="FLUX", cold_start_s=lambda s: s.flux_cold_start_s),
    EngineSpec(
        Engine.imagen, ImagenUpscaleForm, ImagenParams, imagen_job, (
            DeploymentSpec("Imagen", ImagenDeployment, opt.imagen_options),),
        runs_jobs="Imagen", status="Imagen",
        # A cloud call: the device is Google's; seconds of round trip and queueing at Vertex.
        initial_rate=InitialRate(cpu=1.0, cuda=1.0, per_job=8.0),
        summary="Upscale with Imagen on Vertex AI (a cloud call)",
        extra_errors=(502, 504), critical=False),
)
# The rest of the graph: the quota keeper, and the Ingress that calls every deployment.
QUOTAS = DeploymentSpec("Quotas", QuotaKeeper, opt.quotas_options)
INGRESS = DeploymentSpec("Ingress", None, opt.ingress_options,
                         builder_only=("max_ongoing_requests",))


def _by_engine() -> Mapping[Engine, EngineSpec]:
    # An engine without an entry is a mistake found when this is imported, not a KeyError in
    # a request for it.
    table = {spec.engine: spec for spec in ENGINES}
    if missing := set(Engine) - set(table):
        raise TypeError(f"no EngineSpec for engine(s) {sorted(e.value for e in missing)}")
    return table


ENGINE_SPECS: Mapping[Engine, EngineSpec] = _by_engine()


def graph_deployments() -> tuple[DeploymentSpec, ...]:
    """Every deployment the Ingress calls, in the order they are bound (a deployment after
    those it calls)."""
    return (*(d for spec in ENGINES for d in spec.deployments), QUOTAS)


def initial_rates() -> dict[Engine, InitialRate]:
    return {spec.engine: spec.initial_rate for spec in ENGINES}
