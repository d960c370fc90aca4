"""Every Ray API this project uses that Ray does not promise to keep (private modules, config
internals), behind one small module: a Ray upgrade that moves one changes this file alone, and
``tests/test_ray_compat.py`` says at once which one moved."""

from __future__ import annotations

from typing import Any

from upscaler.errors import unwrap

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


def serve_replica_counts() -> dict[str, int]:
    """Running replicas of each deployment of this replica's application (from Serve's public
    ``serve.status()``; blocking: call it in a thread)."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    app = serve.get_replica_context().replica_id.deployment_id.app_name
    overview = serve.status().applications[app]
    return {name: d.replica_states.get(ReplicaState.RUNNING, 0)
            for name, d in overview.deployments.items()}
