"""Ray plumbing both the deployments and the HTTP app use: the Ray APIs that Ray does not promise
to keep (one place to change on an upgrade; tests/test_ray_support.py says which moved), and
the service's Prometheus metrics through Ray's metrics API (no-ops outside a Ray worker)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from upscaler.errors import StorageError, unwrap
from upscaler.settings import Settings

__all__ = ["unwrap"]  # Ray-free, so the runner and the HTTP errors read causes without Ray


def serve_start(http_options: dict[str, Any], grpc_options: dict[str, Any],
                proxy_location: Any) -> Any:
    """Start Serve's controller and proxies with a config file's options, as `serve run CONFIG`
    does; returns the client whose ``deploy_apps(config)`` deploys the file's applications."""
    from ray.serve._private.api import serve_start as _serve_start

    return _serve_start(http_options=http_options, grpc_options=grpc_options,
                        proxy_location=proxy_location)


def shutdown_serve(timeout_s: float) -> None:
    """Shut Serve down, waiting up to ``timeout_s`` for replicas to stop (``serve.shutdown()``
    waits 30 s at most, less than an Ingress draining its jobs may need)."""
    from ray.serve.context import _get_global_client

    _get_global_client().shutdown(timeout_s=timeout_s)


def metrics_report_interval_s() -> float:
    """How often Ray's metrics agent exports (``metrics_report_interval_ms``; 10 s default),
    with the same 1 s floor Ray's exporter applies."""
    import ray

    return max(ray._config.metrics_report_interval_ms(), 1000) / 1000


def worker_died(exc: BaseException) -> bool:
    """Whether a call failed because the process running it died (a replica, its node), not
    because of what it was asked: such a call is worth running again elsewhere."""
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    return isinstance(unwrap(exc), RayActorError | WorkerCrashedError | NodeDiedError)


def replica_id() -> str | None:
    """This Serve replica's id, or None outside a replica."""
    from ray import serve

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve there is no replica context
        return None


def token_auth_enabled() -> bool:
    """Whether this process's Ray runs with token authentication (``RAY_AUTH_MODE=token``, or
    Ray's own default for a new local cluster)."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return is_token_auth_enabled()


def cluster_declares(resource: str) -> bool:
    """Whether a node of this process's Ray cluster declares ``resource`` (False outside Ray)."""
    import ray

    return ray.is_initialized() and ray.cluster_resources().get(resource, 0) > 0


@dataclass(frozen=True)
class ClusterShape:
    """What the storage rule asks of the cluster: its alive nodes, and whether an autoscaler
    can add more."""

    nodes: int
    autoscaler_can_add_nodes: bool


def cluster_shape() -> ClusterShape:
    """This process's Ray cluster as the GCS knows it; outside Ray (a builder called in a
    test, `serve build`), one machine."""
    import ray

    if not ray.is_initialized():
        return ClusterShape(1, False)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterShape(nodes, _autoscaler_can_add_nodes(nodes))


def _autoscaler_can_add_nodes(nodes: int) -> bool:
    """Whether the GCS knows of an autoscaler that launches nodes: a cluster config reported
    to it that allows more nodes than there are, autoscaler v2 (on only where the cluster
    launcher or KubeRay runs one with a config), or autoscaler v1's status naming node types
    of a config (its read-only mode, for clusters started by hand, names each node
    ``node_<id>``). v1 writes its first status some seconds after the head starts."""
    from ray._private import ray_constants
    from ray._private.state import state
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        counts = [group.max_count for group in config.node_group_configs]
        if -1 in counts or sum(counts) > nodes:
            return True
    if is_autoscaler_v2(fetch_from_server=True):
        return True
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return bool(raw) and autoscaler_v1_has_node_types(json.loads(raw))


def autoscaler_v1_has_node_types(status: dict[str, Any]) -> bool:
    """Whether autoscaler v1's status (``__autoscaling_status`` in the GCS) comes from a
    config's node types rather than its read-only mirror of a cluster started by hand."""
    report = status.get("autoscaler_report") or {}
    names = {*(report.get("active_nodes") or {}), *(report.get("idle_nodes") or {}),
             *(report.get("pending_launches") or {}),
             *(report.get("node_type_mapping") or {}).values(),
             *(node[1] for node in report.get("pending_nodes") or ()),
             *(node[1] for node in report.get("failed_nodes") or ())}
    return any(not name.startswith("node_") for name in names)


def require_shared_storage(settings: Settings) -> None:
    """Refuse local job storage on a cluster whose nodes have disks of their own (the rule:
    ``StorageFields.cluster_storage_refusal``)."""
    shape = cluster_shape()
    if refusal := settings.cluster_storage_refusal(shape.nodes, shape.autoscaler_can_add_nodes):
        raise StorageError(refusal, code="storage_not_shared")


def serve_replica_counts() -> dict[str, int]:
    """Running replicas of each deployment of this replica's application (from Serve's public
    ``serve.status()``; blocking: call it in a thread)."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    app = serve.get_replica_context().replica_id.deployment_id.app_name
    overview = serve.status().applications[app]
    return {name: d.replica_states.get(ReplicaState.RUNNING, 0)
            for name, d in overview.deployments.items()}


def node_resources() -> list[dict[str, float]]:
    """Each live node's total resources (blocking: a question to the GCS; call it in a
    thread). Nodes the autoscaler is still launching are not among them."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


LATENCY_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
TILE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120]
_lock = threading.Lock()
# (gauge factory, sorted tags) -> last value: what the refresh thread re-sends.
_gauge_values: dict[tuple[Any, tuple[tuple[str, str], ...]], float] = {}
_refresher: threading.Thread | None = None


class _Noop:
    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...


@cache
def _metric(kind: str, name: str, description: str, tags: tuple[str, ...],
            buckets: tuple[float, ...] | None = None):
    try:
        import ray
        from ray.util import metrics

        if not ray.is_initialized():
            return _Noop()
        if kind == "counter":
            return metrics.Counter(name, description, tag_keys=tags)
        if kind == "gauge":
            return metrics.Gauge(name, description, tag_keys=tags)
        return metrics.Histogram(name, description, boundaries=list(buckets or ()),
                                 tag_keys=tags)
    except Exception:  # noqa: BLE001 - metrics must never break a request
        return _Noop()


def jobs_total():
    return _metric("counter", "upscaler_jobs_total", "Jobs by engine and final status.",
                   ("engine", "status"))


def jobs_submitted():
    return _metric("counter", "upscaler_jobs_submitted_total", "Jobs accepted, by engine.",
                   ("engine",))


def queue_size():
    return _metric("gauge", "upscaler_queue_size", "Jobs accepted and not finished.",
                   ("engine",))


def job_seconds():
    return _metric("histogram", "upscaler_job_seconds",
                   "Job processing time (start to result), by engine.", ("engine",),
                   tuple(LATENCY_BUCKETS))


def tile_seconds():
    return _metric("histogram", "upscaler_tile_seconds", "Seconds per FLUX tile redraw.",
                   ("engine",), tuple(TILE_BUCKETS))


DELTA_E_BUCKETS = [0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20]
SEAM_BUCKETS = [0.9, 1.0, 1.05, 1.1, 1.25, 1.5, 2, 3, 5]


def delta_e_mean():
    return _metric("histogram", "upscaler_delta_e_mean", "Colour drift of finished jobs: mean "
                   "CIEDE2000 of the output, area-averaged to the input's size, vs the input.",
                   ("engine",), tuple(DELTA_E_BUCKETS))


def seam_score():
    return _metric("histogram", "upscaler_seam_score", "Seam score of finished tiled jobs: "
                   "gradient energy across tile borders over that inside tiles (1 = no seam).",
                   ("engine",), tuple(SEAM_BUCKETS))


def model_load_seconds():
    return _metric("gauge", "upscaler_model_load_seconds", "Seconds the last load of a model "
                   "took.", ("engine", "model"))


def count(metric, value: float = 1.0, **tags: str) -> None:
    _apply(metric, "inc", value, tags)


def set_gauge(metric, value: float, **tags: str) -> None:
    global _refresher
    with _lock:
        _gauge_values[(metric, tuple(sorted(tags.items())))] = value
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_gauges, name="upscaler-gauges",
                                          daemon=True)
            _refresher.start()
    _apply(metric, "set", value, tags)


def _gauge_refresh_seconds() -> float:
    try:
        return metrics_report_interval_s() / 2
    except Exception:  # noqa: BLE001 - outside a Ray process: half Ray's default interval
        return 5.0


def _refresh_gauges() -> None:
    every = _gauge_refresh_seconds()
    while True:
        time.sleep(every)
        with _lock:
            values = list(_gauge_values.items())
        for (metric, tags), value in values:
            _apply(metric, "set", value, dict(tags))


def observe(metric, value: float, **tags: str) -> None:
    _apply(metric, "observe", value, tags)


def _apply(metric, method: str, value: float, tags: dict[str, str]) -> None:
    """Record without ever raising into the caller."""
    try:
        with _lock:
            getattr(metric(), method)(value, tags=tags)
    except Exception:  # noqa: BLE001
        pass


class RunnerMetrics:
    """The job runner's figures (``serve_app.runner_contract.JobMetrics``) as the metrics
    above."""

    def submitted(self, engine: str) -> None:
        count(jobs_submitted, engine=engine)

    def ended(self, engine: str, state: str, seconds: float | None) -> None:
        count(jobs_total, engine=engine, status=state)
        if seconds is not None:
            observe(job_seconds, seconds, engine=engine)

    def open_jobs(self, engine: str, count: int) -> None:
        set_gauge(queue_size, count, engine=engine)
