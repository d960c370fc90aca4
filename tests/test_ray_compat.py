"""The private Ray APIs behind deployments/ray_compat.py still exist in the installed Ray and
behave as the module relies on (the service tests use them for real)."""

from __future__ import annotations

import inspect

from deployments import ray_compat
from upscaler.errors import RateLimited


def test_private_serve_calls_exist_with_the_arguments_we_pass():
    from ray.serve._private.api import serve_start
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client

    params = inspect.signature(serve_start).parameters
    assert {"http_options", "grpc_options", "proxy_location"} <= set(params)
    assert "timeout_s" in inspect.signature(ServeControllerClient.shutdown).parameters
    assert callable(ServeControllerClient.deploy_apps) and callable(_get_global_client)


def test_metrics_interval_reads_rays_config():
    assert ray_compat.metrics_report_interval_s() >= 1.0


def test_unwrap_gives_the_replicas_own_exception():
    from ray.exceptions import RayTaskError

    cause = RateLimited("quota", code="quota_exhausted", retry_after=30)
    wrapped = RayTaskError("run", "Traceback ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, RateLimited)
    assert ray_compat.unwrap(wrapped) is cause
    plain = ValueError("x")
    assert ray_compat.unwrap(plain) is plain


def test_no_replica_outside_serve():
    assert ray_compat.replica_id() is None


def test_token_auth_mode_is_read_from_ray():
    assert isinstance(ray_compat.token_auth_enabled(), bool)
