"""The shipped cluster configs keep the head's state in Redis (GCS fault tolerance), with the
Redis password from a secret, never in the file. tests/test_cluster.py kills a GCS so
configured and shows the service answering and its jobs completing."""

from __future__ import annotations

import re

from helpers.deploy_files import load


def test_kuberay_service_has_gcs_fault_tolerance_with_a_secret_password():
    from ray._private.services import get_address

    cluster = load("k8s/rayservice.yaml")["spec"]["rayClusterConfig"]
    ft = cluster["gcsFaultToleranceOptions"]
    get_address(ft["redisAddress"])  # an address Ray's GCS accepts
    assert set(ft["redisPassword"]) == {"valueFrom"}  # from a Secret, no literal
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["key"]
    # The older annotation would be a second, conflicting switch.
    assert "ray.io/ft-enabled" not in str(load("k8s/rayservice.yaml")["metadata"])


def test_cluster_launcher_head_uses_redis_and_workers_wait_for_it():
    from ray._private.services import get_address

    config = load("cluster.yaml")
    [start] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    address = re.search(r"\bRAY_REDIS_ADDRESS=(\S+)", start)
    assert address, start
    get_address(address.group(1))
    # The password read from a file the launcher copies, not written here.
    password = re.search(r'--redis-password="\$\(cat (\S+)\)"', start)
    assert password and password.group(1) in config["file_mounts"], start
    [join] = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    timeout = re.search(r"\bRAY_gcs_rpc_server_reconnect_timeout_s=(\d+)", join)
    assert timeout and int(timeout.group(1)) >= 300  # longer than a head's restart
