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


def test_private_autoscaler_state_reads_exist():
    """What ``cluster_shape`` reads from the GCS: the reported cluster config, the autoscaler
    v2 flag and autoscaler v1's status key, under the names this Ray gives them."""
    from ray._private import ray_constants
    from ray._private.state import GlobalState
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    assert callable(GlobalState.get_cluster_config)
    assert "fetch_from_server" in inspect.signature(is_autoscaler_v2).parameters
    assert ray_constants.DEBUG_AUTOSCALING_STATUS == "__autoscaling_status"
