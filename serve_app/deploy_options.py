"""Ray Serve options of the graph's deployments, from the settings: what serve_app/engine_specs.py
gives each deployment and serve_app/app.py binds. A Serve config's ``deployments:`` entries
override these (tests/test_deploy_configs.py checks them against the table)."""

from __future__ import annotations

from typing import Any

from upscaler.settings import Settings

# Placement: a custom resource only CPU nodes declare (a cluster's head: cluster.yaml,
# k8s/rayservice.yaml; the head `upscaler serve` starts). The Ingress, Quotas, the FLUX
# coordinator and Imagen each ask for a sliver of it, so they never take a GPU node's CPUs;
# the engines reserve GPUs, so they run on GPU nodes only. A resource rather than node labels:
# both of Ray's autoscalers plan with resources (v1, KubeRay's default, ignores labels and
# would launch GPU nodes for CPU work), and an unknown resource is infeasible, never a node.
CPU_NODE_RESOURCE = "upscaler_cpu_node"
# What a replica asks of a placement resource (CPU node, GPU node type) a node declares 1 of:
# the resource only says where it may run (room for a thousand); its CPUs and GPUs, how many fit.
PLACEMENT_SHARE = 0.001


def on_cpu_nodes(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with their replicas held to nodes that declare CPU_NODE_RESOURCE."""
    actor = options.get("ray_actor_options", {})
    return {**options, "ray_actor_options": {
        **actor, "resources": {**actor.get("resources", {}), CPU_NODE_RESOURCE: PLACEMENT_SHARE}}}


# Loading models can take minutes on a cold disk: patient health checks and shutdowns.
PATIENT: dict[str, Any] = {"health_check_period_s": 10, "health_check_timeout_s": 60,
                           "graceful_shutdown_timeout_s": 60}
# The router polls full replicas with a backoff that grows to 0.5 s: a tile waiting for a
# replica would start up to that long after the replica frees. 50 ms at most keeps the cards
# busy; the polling is a few routing tasks (two per replica) reading a local cache.
FLUX_ROUTER = {"initial_backoff_s": 0.005, "max_backoff_s": 0.05}


def gpus_available(settings: Settings) -> bool:
    """Whether GPU engines should reserve GPUs: ``device`` decides, and ``auto`` asks Ray.

    Ray's resources, not torch: the builder of a config deploy runs in a Ray task on the head
    node, which Ray hides every GPU from (and a cluster's head has none anyway).
    """
    if settings.device != "auto":
        return settings.device == "cuda"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def esrgan_gpus(settings: Settings) -> float:
    """Explicit setting, else a quarter card when GPUs are visible (FLUX takes the rest), or
    when a GPU node type is named (the autoscaler may not have launched one yet)."""
    if settings.esrgan_num_gpus is not None:
        return settings.esrgan_num_gpus
    return 0.25 if settings.esrgan_node_type or gpus_available(settings) else 0


def flux_gpus(settings: Settings) -> float:
    if settings.flux_num_gpus is not None:
        return settings.flux_num_gpus
    return 0.75 if settings.flux_node_type or gpus_available(settings) else 0


def on_node_type(node_type: str | None) -> dict[str, Any]:
    """``ray_actor_options`` entries that keep an engine on one GPU node type (and make Ray's
    autoscaler launch that type for it); nothing when none is named, so one machine without
    the resource still runs it."""
    return {"resources": {node_type: PLACEMENT_SHARE}} if node_type else {}


def node_type_resources(settings: Settings) -> dict[str, float]:
    """The node types the settings name, as one machine's own resources: `upscaler serve`
    starting its own Ray declares them, so a cluster's config runs on one machine too."""
    return {t: 1.0 for t in (settings.esrgan_node_type, settings.flux_node_type) if t}


def ingress_shutdown_s(settings: Settings) -> float:
    """The Ingress's graceful shutdown: its job drain plus time for requests in flight."""
    return settings.ingress_drain_s + 30


def autoscaling(min_replicas: int, max_replicas: int, idle_s: float = 120) -> dict[str, Any]:
    return {
        # min 0: no replica (and no GPU held) until a job comes; Serve starts one for it.
        "min_replicas": min_replicas,
        "initial_replicas": min_replicas,
        "max_replicas": max(min_replicas, max_replicas, 1),
        # GPU-bound: one job per replica at a time, so scale when one more is waiting.
        "target_ongoing_requests": 1,
        "upscale_delay_s": 5,
        "downscale_delay_s": idle_s,
    }


def engine_queue(settings: Settings) -> int:
    """Requests an engine deployment's router may hold: every job the cap admits, plus room
    for model and health questions. Past it Serve answers back-pressure at once."""
    return settings.max_open_jobs + 50


def esrgan_options(settings: Settings) -> dict[str, Any]:
    return {"ray_actor_options": {"num_gpus": esrgan_gpus(settings),
                                  "num_cpus": settings.esrgan_num_cpus,
                                  **on_node_type(settings.esrgan_node_type)},
            "max_ongoing_requests": settings.esrgan_max_ongoing_requests,
            "max_queued_requests": engine_queue(settings),
            "autoscaling_config": autoscaling(settings.esrgan_min_replicas,
                                              settings.esrgan_max_replicas),
            **PATIENT}


def flux_options(settings: Settings) -> dict[str, Any]:
    return {"ray_actor_options": {"num_gpus": flux_gpus(settings),
                                  "num_cpus": settings.flux_num_cpus,
                                  **on_node_type(settings.flux_node_type)},
            # The tile being drawn only: the next waits in the router and goes to whichever
            # replica frees first. A second slot would commit it to a replica early; with few
            # tiles left (the end of a job) it then waits there while another replica idles.
            "max_ongoing_requests": 1,
            "request_router_config": FLUX_ROUTER,
            "autoscaling_config": autoscaling(settings.flux_min_replicas,
                                              settings.flux_max_replicas, settings.flux_idle_s),
            # FLUX work is resumable from stored tiles: a replica going away need not drain.
            **PATIENT, "graceful_shutdown_timeout_s": 5}


def flux_coordinator_options(settings: Settings) -> dict[str, Any]:
    # The coordinator holds each job's image in memory, admitted against a budget
    # (flux_coordinator_memory_gb); jobs past it wait in its queue as `queued`.
    return {"num_replicas": 1, "max_ongoing_requests": settings.max_open_jobs,
            "max_queued_requests": engine_queue(settings), "ray_actor_options": {"num_cpus": 0},
            "graceful_shutdown_timeout_s": 5}


def imagen_options(settings: Settings) -> dict[str, Any]:
    return {"ray_actor_options": {"num_cpus": 0},  # network-bound: waits on Vertex AI
            # Calls in flight per replica: Vertex's quota is ~50/min per region anyway.
            "max_ongoing_requests": settings.imagen_max_ongoing_requests,
            "max_queued_requests": engine_queue(settings),
            "autoscaling_config": {"min_replicas": 1,
                                   "max_replicas": settings.imagen_max_replicas,
                                   "target_ongoing_requests":
                                       settings.imagen_max_ongoing_requests // 2 or 1}}


def quotas_options(settings: Settings) -> dict[str, Any]:
    # One replica for every Ingress: each decision on one count (see deployments/quotas.py).
    return {"num_replicas": 1, "max_ongoing_requests": 1000, "ray_actor_options": {"num_cpus": 0}}


def ingress_options(settings: Settings) -> dict[str, Any]:
    return {
        # Any number: job records are written conditionally, drivers hold leases.
        "num_replicas": settings.ingress_replicas,
        # I/O-bound; uploads wait for handles, not for CPU. Uploads, event streams and
        # requests without a key are capped below this (Settings._slots_for_health_and_status),
        # so health and status always find a slot.
        "max_ongoing_requests": settings.ingress_max_ongoing_requests,
        "max_queued_requests": 100,
        "ray_actor_options": {"num_cpus": 0.25},
        # Requests in flight drain first, then the runner lets the jobs in flight finish.
        "graceful_shutdown_timeout_s": ingress_shutdown_s(settings),
    }
