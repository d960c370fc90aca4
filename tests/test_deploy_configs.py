"""Deployment files: validated against Ray's own schemas, offline, and kept in agreement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serve_app.app import build_app

REPO = Path(__file__).resolve().parent.parent
GRAPH = {"Ingress", "ESRGAN", "FLUX", "FluxCoordinator", "Imagen"}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def deployments(app: dict) -> dict[str, dict]:
    return {d["name"]: d for d in app.get("deployments", [])}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_serve_configs_validate_and_name_the_graph(name):
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(load(name))
    [app] = config.applications
    assert app.import_path == "serve_app.app:build_app"
    assert {d.name for d in app.deployments} == GRAPH
    build_app(app.args)  # the builder accepts the args (unknown keys would be ignored silently)
    from serve_app.settings import Settings

    assert set(app.args) <= set(Settings.model_fields)


def test_gpu_config_reserves_gpus_as_planned():
    deps = deployments(load("serve_config.yaml")["applications"][0])
    assert 0 < deps["ESRGAN"]["ray_actor_options"]["num_gpus"] < 1  # replicas share a card
    assert deps["FLUX"]["ray_actor_options"]["num_gpus"] == 1
    for cpu_only in ("Imagen", "Ingress", "FluxCoordinator"):
        assert deps[cpu_only]["ray_actor_options"].get("num_gpus", 0) == 0
    for name in ("ESRGAN", "FLUX"):
        auto = deps[name]["autoscaling_config"]
        assert auto["min_replicas"] <= auto["max_replicas"] and auto["max_replicas"] > 1
        assert deps[name]["health_check_timeout_s"] >= 60


def test_cpu_config_reserves_no_gpu():
    deps = deployments(load("serve_config.cpu.yaml")["applications"][0])
    assert all(d.get("ray_actor_options", {}).get("num_gpus", 0) == 0 for d in deps.values())


def test_kuberay_service_embeds_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    manifest = load("k8s/rayservice.yaml")
    assert manifest["kind"] == "RayService"
    embedded = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    assert embedded.applications[0].import_path == "serve_app.app:build_app"
    worker = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_cluster_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any("UPSCALER_STORAGE_URL=s3://" in o for o in config["docker"]["run_options"])


def test_compose_agrees_with_the_service():
    compose = load("docker/compose.yaml")["services"]["upscaler"]
    assert "8000:8000" in compose["ports"] and "8265:8265" in compose["ports"]
    mounts = {v.split(":")[1] for v in compose["volumes"]}
    env = compose["environment"]
    assert {env["UPSCALER_MODELS_DIR"], env["UPSCALER_DATA_DIR"]} <= mounts
    assert "/api/health" in " ".join(compose["healthcheck"]["test"])
    [device] = compose["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert compose["restart"] == "unless-stopped"
    # One card shared by both GPU engines must add up to at most one card.
    assert float(env["UPSCALER_ESRGAN_NUM_GPUS"]) + float(env["UPSCALER_FLUX_NUM_GPUS"]) <= 1


def test_dockerfile_installs_like_the_readme():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and re.search(r"^RUN make install", dockerfile, re.M)
    assert re.search(r"^USER upscaler", dockerfile, re.M)  # not root
    assert "ENV" in dockerfile and "UPSCALER_MODELS_DIR=/models" in dockerfile
    for path in re.findall(r"^COPY \S+ (\S+) ", dockerfile, re.M):
        assert (REPO / path).exists(), path


def test_grafana_dashboard_queries_our_metrics():
    import json

    from serve_app import metrics

    dashboard = json.loads((REPO / "ops" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    # Each metric function is named after its metric; Ray exports it with a ray_ prefix.
    for fn in (metrics.jobs_total, metrics.queue_size, metrics.job_seconds,
               metrics.tile_seconds, metrics.model_load_seconds):
        assert f"ray_upscaler_{fn.__name__}" in exprs
