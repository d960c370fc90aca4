"""Deployment files: validated against Ray's own schemas, offline, and kept in agreement."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers.deploy_files import REPO, load

from serve_app.app import build_app


def deployments(app: dict) -> dict[str, dict]:
    return {d["name"]: d for d in app.get("deployments", [])}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_serve_configs_validate_against_rays_schema(name):
    from ray.serve.schema import ServeDeploySchema

    from upscaler.settings import Settings

    config = ServeDeploySchema.model_validate(load(name))
    [app] = config.applications
    assert app.import_path == "serve_app.app:build_app"
    build_app(app.args)  # the builder's typed args accept them
    assert set(app.args) <= set(Settings.model_fields)
    assert config.http_options.request_timeout_s >= 300  # large uploads, long sync waits


def test_production_configs_close_the_docs_and_make_run_keeps_them():
    """/docs, /openapi.json and Swagger UI's files: off where the service faces the world
    (the cluster config, KubeRay's copy of it, the image), on for `make run` (`upscaler serve`
    with the built-in graph or the CPU config, and the settings' default)."""
    from upscaler.settings import load_settings

    for manifest in (load("serve_config.yaml"),
                     yaml.safe_load(load("k8s/rayservice.yaml")["spec"]["serveConfigV2"])):
        assert load_settings(manifest["applications"][0]["args"]).docs is False
    assert re.search(r"^\s+UPSCALER_DOCS=false\b", (REPO / "docker" / "Dockerfile").read_text(),
                     re.M)
    assert "docs" not in load("serve_config.cpu.yaml")["applications"][0]["args"]
    assert load_settings({}).docs is True


def test_a_misspelt_arg_stops_the_deploy():
    """Serve validates a config's args with the builder's typed model: a key that is not a
    setting is an error naming it, not a setting silently ignored."""
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve_app.app import build_app

    with pytest.raises(ValidationError, match="storage_ulr"):
        call_user_app_builder_with_args_if_necessary(build_app, {"storage_ulr": "/x"})
    app = call_user_app_builder_with_args_if_necessary(build_app, {"device": "cpu"})
    assert type(app).__name__ == "Application"


def test_cpu_config_is_package_data():
    """`upscaler serve` finds the CPU config beside the installed package, not the checkout;
    the root file is a link to it for `serve run serve_config.cpu.yaml`."""
    from upscaler.commands.cli import CPU_SERVE_CONFIG

    assert CPU_SERVE_CONFIG.parent == Path(__import__("serve_app").__file__).parent
    assert (REPO / "serve_config.cpu.yaml").resolve() == CPU_SERVE_CONFIG.resolve()


def _table() -> dict:
    from serve_app.engine_specs import INGRESS, graph_deployments

    return {spec.name: spec for spec in (*graph_deployments(), INGRESS)}


def _serve_configs() -> dict[str, dict]:
    """The checked-in Serve configs: the GPU one, KubeRay's copy of it, the CPU one."""
    return {"serve_config.yaml": load("serve_config.yaml"),
            "k8s/rayservice.yaml": yaml.safe_load(load("k8s/rayservice.yaml")["spec"][
                "serveConfigV2"]),
            "serve_config.cpu.yaml": load("serve_config.cpu.yaml")}


@pytest.mark.parametrize("name", list(_serve_configs()))
def test_checked_in_configs_agree_with_the_engine_table(name):
    """The configs stay hand-written YAML; the table (serve_app/engine_specs.py) is what the
    builder deploys. A config names the table's deployments only (the GPU one all of them),
    overrides only options the builder sets, keeps the table's fixed options and leaves its
    builder-only ones alone; where it gives GPUs, it gives them to the GPU engines only; the
    Ingress stops after its drain."""
    from serve_app.deploy_options import ingress_shutdown_s
    from upscaler.settings import load_settings

    table, config = _table(), _serve_configs()[name]
    [app] = config["applications"]
    settings = load_settings(app["args"])
    overrides = deployments(app)
    if name == "serve_config.cpu.yaml":  # the builder's options as they are: no GPU
        assert not overrides and app["args"]["device"] == "cpu"
        assert all(spec.options(settings)["ray_actor_options"].get("num_gpus", 0) == 0
                   for spec in table.values())
        return
    assert config == load("serve_config.yaml")  # KubeRay's copy is the same config
    assert set(overrides) == set(table)
    for deployment, given in overrides.items():
        # As built on a cluster whose CPU nodes declare themselves (the configs' clusters).
        spec, built = table[deployment], table[deployment].deploy_options(settings, True)
        assert set(given) - {"name"} <= set(built), deployment
        for option in set(given) & {"autoscaling_config", "ray_actor_options"}:
            assert set(given[option]) <= set(built[option]) | {"num_gpus"}, deployment
        assert all(given[o] == built[o] for o in spec.fixed if o in given), deployment
        assert not set(spec.builder_only) & set(given), deployment
        gpus = given["ray_actor_options"].get("num_gpus", 0)
        assert gpus > 0 if spec.gpu else gpus == 0, deployment
        # Ray replaces ray_actor_options whole: each keeps the builder's placement (CPU-side
        # deployments on the nodes declaring the CPU resource, engines where the GPUs are).
        assert given["ray_actor_options"].get("resources") == \
            built["ray_actor_options"].get("resources"), deployment
        if "health_check_timeout_s" in given:  # models load no faster in a cluster
            assert given["health_check_timeout_s"] >= built["health_check_timeout_s"]
        if auto := given.get("autoscaling_config"):
            assert auto["min_replicas"] <= auto["max_replicas"]
    assert overrides["Ingress"]["graceful_shutdown_timeout_s"] >= ingress_shutdown_s(settings)


def test_every_engine_is_in_the_table_once():
    """One entry per engine, whose params are that engine's and whose deployments the graph
    binds under names no other entry uses."""
    from serve_app.engine_specs import ENGINES, INGRESS, graph_deployments
    from upscaler.domain.jobs import Engine

    assert sorted(spec.engine for spec in ENGINES) == sorted(Engine)
    for spec in ENGINES:
        assert spec.params.model_fields["engine"].default is spec.engine
        names = {d.name for d in spec.deployments}
        assert {spec.runs_jobs, spec.status} <= names
    bound = [d.name for d in graph_deployments()]
    assert len(set(bound)) == len(bound) and INGRESS.name not in bound


def test_compose_stops_after_the_ingress_drain():
    from serve_app.deploy_options import ingress_shutdown_s
    from upscaler.settings import load_settings

    grace = load("docker/compose.yaml")["services"]["upscaler"]["stop_grace_period"]
    assert float(grace.rstrip("s")) > ingress_shutdown_s(load_settings({}))


def test_upscaler_serve_takes_flags_then_environment_then_the_file(tmp_path, monkeypatch):
    from upscaler.commands.cli import CPU_SERVE_CONFIG, local_serve_config

    for var in [v for v in __import__("os").environ if v.startswith("UPSCALER_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    config, settings = local_serve_config(CPU_SERVE_CONFIG, {})
    [app] = config.applications
    assert app.args == {"device": "cpu", "data_dir": str(tmp_path / "data")}  # absolute
    assert (config.http_options.host, config.http_options.port) == ("127.0.0.1", 8000)
    assert config.http_options.request_timeout_s == 900  # the file's own options stay

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"http_options": {"host": "0.0.0.0", "port": 9000},
                                    "applications": [{**load("serve_config.cpu.yaml")[
                                        "applications"][0], "args": {
                                        "device": "cpu", "max_upload_mb": 5, "sync_wait_s": 7,
                                        "models_dir": "/from/file"}}]}))
    monkeypatch.setenv("UPSCALER_MAX_UPLOAD_MB", "9")
    monkeypatch.setenv("UPSCALER_MODELS_DIR", "/from/env")
    monkeypatch.setenv("UPSCALER_PORT", "9100")
    config, settings = local_serve_config(path, {"models_dir": Path("/from/flag"),
                                                 "host": None})
    args = config.applications[0].args
    assert args["sync_wait_s"] == 7  # the file
    assert args["max_upload_mb"] == 9  # the environment over the file
    assert args["models_dir"] == "/from/flag"  # the flag over both
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 9100)
    assert (settings.host, settings.port) == ("0.0.0.0", 9100)


def test_upscaler_serve_without_a_file_deploys_the_built_in_graph(monkeypatch, tmp_path):
    from upscaler.commands.cli import local_serve_config

    monkeypatch.chdir(tmp_path)
    config, _ = local_serve_config(None, {"port": 8123})
    [app] = config.applications
    assert app.import_path == "serve_app.app:build_app" and not app.deployments
    assert config.http_options.port == 8123


def test_kuberay_service_embeds_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    manifest = load("k8s/rayservice.yaml")
    assert manifest["kind"] == "RayService"
    raw = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    embedded = ServeDeploySchema.model_validate(raw)
    assert embedded.applications[0].import_path == "serve_app.app:build_app"
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for worker in groups:
        limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    # A worker group for each GPU engine's node type, declaring its resource, from zero.
    declared = {name for group in groups for name in json.loads(json.loads(
        group["rayStartParams"]["resources"])) if group["minReplicas"] == 0}
    assert engine_node_types(embedded.applications[0].args) <= declared


def engine_node_types(args: dict) -> set[str]:
    from upscaler.settings import load_settings

    settings = load_settings(args)
    types = {settings.esrgan_node_type, settings.flux_node_type}
    assert None not in types and len(types) == 2  # ESRGAN and FLUX on their own cards
    return types  # type: ignore[return-value]


def test_cluster_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    # Each GPU engine's node type is a type here, launched from zero, with a GPU.
    [app] = load("serve_config.yaml")["applications"]
    for name in engine_node_types(app["args"]):
        [node_type] = [t for t in types.values() if t["resources"].get(name) == 1]
        assert node_type["min_workers"] == 0 and node_type["resources"]["GPU"] >= 1
    # Storage every node reaches comes from serve_config.yaml's args, which win over the
    # environment: a variable here would be silently shadowed.
    assert not any("UPSCALER_STORAGE_URL" in o for o in config["docker"]["run_options"])
    assert app["args"]["storage_url"].split("://")[0] in ("s3", "gs")


def test_compose_agrees_with_the_service():
    compose = load("docker/compose.yaml")["services"]["upscaler"]
    assert "8000:8000" in compose["ports"] and "127.0.0.1:8265:8265" in compose["ports"]
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

    from upscaler import ray_support
    dashboard = json.loads((REPO / "ops" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    # Each metric function is named after its metric; Ray exports it with a ray_ prefix.
    for fn in (ray_support.jobs_total, ray_support.queue_size, ray_support.job_seconds,
               ray_support.tile_seconds, ray_support.model_load_seconds,
               ray_support.delta_e_mean, ray_support.seam_score):
        assert f"ray_upscaler_{fn.__name__}" in exprs
