"""The private Ray APIs behind deployments/ray_support.py still exist in the installed Ray and
behave as the module relies on (the service tests use them for real)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

from helpers.processes import REPO

from upscaler import ray_support
from upscaler.errors import RateLimited


def test_private_serve_calls_exist_with_the_arguments_we_pass():
    from ray.serve._private.api import serve_start
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client

    params = inspect.signature(serve_start).parameters
    assert {"http_options", "grpc_options", "proxy_location"} <= set(params)
    assert "timeout_s" in inspect.signature(ServeControllerClient.shutdown).parameters
    assert callable(ServeControllerClient.deploy_apps) and callable(_get_global_client)


READ_RAY = ("import json; from upscaler import ray_support; "
            "print(json.dumps([ray_support.metrics_report_interval_s(), "
            "ray_support.token_auth_enabled()]))")


def test_metrics_interval_and_token_auth_are_read_from_rays_config():
    """Ray reads its config from RAY_* variables when it starts, so each case is a process:
    the interval the service tests set (with Ray's 1 s floor), and the auth mode."""
    cases = {("2500", "token"): [2.5, True], ("200", "disabled"): [1.0, False]}
    procs = {case: subprocess.Popen(
        [sys.executable, "-c", READ_RAY], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_metrics_report_interval_ms": case[0],
             "RAY_AUTH_MODE": case[1]}) for case in cases}
    for case, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert json.loads(out.strip().splitlines()[-1]) == cases[case], case


def test_unwrap_gives_the_replicas_own_exception():
    from ray.exceptions import RayTaskError

    cause = RateLimited("quota", code="quota_exhausted", retry_after=30)
    wrapped = RayTaskError("run", "Traceback ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, RateLimited)
    assert ray_support.unwrap(wrapped) is cause
    plain = ValueError("x")
    assert ray_support.unwrap(plain) is plain


def test_no_replica_outside_serve():
    assert ray_support.replica_id() is None
