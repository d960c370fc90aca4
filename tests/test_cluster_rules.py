"""What a cluster of several nodes asks of the service, without one: local job storage refused
where nodes have disks of their own, and the graph's placement (CPU side, GPU engines)."""

from __future__ import annotations

import pytest

from upscaler.settings import load_settings


@pytest.mark.parametrize("url", [None, "/srv/jobs", "file:///srv/jobs", "local:///srv/jobs",
                                 "simplecache::file:///srv/jobs"])
def test_local_storage_is_refused_on_a_cluster_that_has_or_can_get_more_nodes(url, tmp_path):
    settings = load_settings({"data_dir": tmp_path, "storage_url": url})
    assert settings.storage_is_local
    assert settings.cluster_storage_refusal(1, False) is None  # one machine: its own disk is fine
    for nodes, grows, why in ((2, False, "has 2 nodes"), (1, True, "autoscaler can add nodes")):
        refusal = settings.cluster_storage_refusal(nodes, grows)
        assert refusal and why in refusal
        assert "storage_url" in refusal and "UPSCALER_STORAGE_URL" in refusal
        assert settings.resolved_storage_url in refusal


@pytest.mark.parametrize("url", ["s3://bucket/upscaler", "gs://bucket/upscaler",
                                 "simplecache::s3://bucket/x"])
def test_a_bucket_is_fine_on_any_cluster(url):
    settings = load_settings({"storage_url": url})
    assert not settings.storage_is_local
    assert settings.cluster_storage_refusal(8, True) is None


def test_a_shared_mount_is_the_operators_word(tmp_path):
    settings = load_settings({"data_dir": tmp_path, "storage_shared_mount": True})
    assert settings.cluster_storage_refusal(3, True) is None


def test_the_refusal_is_a_storage_error_outside_ray(tmp_path, monkeypatch):
    """Outside Ray (a builder called directly) the cluster is one machine: nothing refused;
    the error raised on a cluster is the project's (StorageError, code storage_not_shared)."""
    from upscaler import ray_support
    from upscaler.errors import StorageError

    settings = load_settings({"data_dir": tmp_path})
    ray_support.require_shared_storage(settings)  # not raised: one machine
    monkeypatch.setattr(ray_support, "cluster_shape", lambda: ray_support.ClusterShape(2, False))
    with pytest.raises(StorageError, match="storage_url") as caught:
        ray_support.require_shared_storage(settings)
    assert caught.value.code == "storage_not_shared"


def test_autoscaler_v1_status_tells_a_config_from_a_hand_made_cluster():
    from upscaler.ray_support import autoscaler_v1_has_node_types

    by_hand = {"autoscaler_report": {"active_nodes": {"node_0a1b": 1}, "idle_nodes": {},
                                     "pending_launches": {}, "pending_nodes": [],
                                     "failed_nodes": [], "node_type_mapping": {}}}
    assert not autoscaler_v1_has_node_types(by_hand)
    assert not autoscaler_v1_has_node_types({})  # no report yet
    launched = {"autoscaler_report": {**by_hand["autoscaler_report"],
                                      "active_nodes": {"ray.head.default": 1}}}
    assert autoscaler_v1_has_node_types(launched)
    pending = {"autoscaler_report": {**by_hand["autoscaler_report"],
                                     "pending_nodes": [["10.0.0.2", "gpu_24gb", "setting-up"]]}}
    assert autoscaler_v1_has_node_types(pending)


def test_cpu_side_deployments_go_to_declared_cpu_nodes_and_engines_to_gpus():
    """Where the cluster declares CPU nodes, everything but the GPU engines asks for their
    resource; where it does not (a laptop), nothing changes."""
    from serve_app.deploy_options import CPU_NODE_RESOURCE
    from serve_app.engine_specs import INGRESS, graph_deployments

    settings = load_settings({"device": "cuda"})
    specs = {spec.name: spec for spec in (*graph_deployments(), INGRESS)}
    assert {n for n, s in specs.items() if s.gpu} == {"ESRGAN", "FLUX"}
    for name, spec in specs.items():
        placed = spec.deploy_options(settings, True)["ray_actor_options"]
        plain = spec.deploy_options(settings, False)["ray_actor_options"]
        assert CPU_NODE_RESOURCE not in plain.get("resources", {}), name
        if spec.gpu:
            assert placed.get("num_gpus", 0) > 0 and CPU_NODE_RESOURCE not in placed.get(
                "resources", {}), name
        else:
            assert placed["resources"][CPU_NODE_RESOURCE] > 0, name
            assert placed.get("num_gpus", 0) == 0, name
