"""Deployment files: validated against Ray's own schemas, offline, and kept in agreement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serve_app.app import build_app

REPO = Path(__file__).resolve().parent.parent


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


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
        spec, built = table[deployment], table[deployment].options(settings)
        assert set(given) - {"name"} <= set(built), deployment
        for option in set(given) & {"autoscaling_config", "ray_actor_options"}:
            assert set(given[option]) <= set(built[option]) | {"num_gpus"}, deployment
        assert all(given[o] == built[o] for o in spec.fixed if o in given), deployment
        assert not set(spec.builder_only) & set(given), deployment
        gpus = given["ray_actor_options"].get("num_gpus", 0)
        assert gpus > 0 if spec.gpu else gpus == 0, deployment
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
    # Storage every node reaches comes from serve_config.yaml's args, which win over the
    # environment: a variable here would be silently shadowed.
    assert not any("UPSCALER_STORAGE_URL" in o for o in config["docker"]["run_options"])
    [app] = load("serve_config.yaml")["applications"]
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
               ray_support.tile_seconds, ray_support.model_load_seconds):
        assert f"ray_upscaler_{fn.__name__}" in exprs


# --- TLS between clients and the Serve proxies ----------------------------------------------

def _clean_env(monkeypatch, tmp_path) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("UPSCALER_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def test_tls_settings_reach_the_proxies_http_options(tmp_path, monkeypatch):
    """Flags, then UPSCALER_TLS_*, then the file's own http_options; paths made absolute (the
    proxies run in other directories); the printed URLs switch to https."""
    from upscaler.commands.cli import CPU_SERVE_CONFIG, local_serve_config

    _clean_env(monkeypatch, tmp_path)
    for name in ("cert.pem", "key.pem", "env-cert.pem", "file-cert.pem", "file-key.pem"):
        (tmp_path / name).write_text("PEM")
    config, settings = local_serve_config(CPU_SERVE_CONFIG, {})
    assert config.http_options.ssl_certfile is None and settings.tls_certfile is None

    config, settings = local_serve_config(
        CPU_SERVE_CONFIG, {"tls_certfile": Path("cert.pem"), "tls_keyfile": Path("key.pem")})
    http = config.http_options
    assert (http.ssl_certfile, http.ssl_keyfile) == (str(tmp_path / "cert.pem"),
                                                     str(tmp_path / "key.pem"))
    assert settings.tls_certfile == tmp_path / "cert.pem"

    path = tmp_path / "tls.yaml"
    raw = load("serve_config.cpu.yaml")
    raw["http_options"].update(ssl_certfile=str(tmp_path / "file-cert.pem"),
                               ssl_keyfile=str(tmp_path / "file-key.pem"))
    path.write_text(yaml.safe_dump(raw))
    config, _ = local_serve_config(path, {})
    assert config.http_options.ssl_certfile == str(tmp_path / "file-cert.pem")  # the file
    monkeypatch.setenv("UPSCALER_TLS_CERTFILE", str(tmp_path / "env-cert.pem"))
    config, _ = local_serve_config(path, {})
    assert config.http_options.ssl_certfile == str(tmp_path / "env-cert.pem")  # env over file
    assert config.http_options.ssl_keyfile == str(tmp_path / "file-key.pem")
    config, _ = local_serve_config(path, {"tls_certfile": tmp_path / "cert.pem"})
    assert config.http_options.ssl_certfile == str(tmp_path / "cert.pem")  # the flag over both


def test_tls_needs_both_files_readable(tmp_path, monkeypatch):
    from upscaler.commands.cli import CPU_SERVE_CONFIG, ServeConfigError, local_serve_config

    _clean_env(monkeypatch, tmp_path)
    (tmp_path / "cert.pem").write_text("PEM")
    with pytest.raises(ServeConfigError, match="both a certificate and its key"):
        local_serve_config(CPU_SERVE_CONFIG, {"tls_certfile": tmp_path / "cert.pem"})
    monkeypatch.setenv("UPSCALER_TLS_KEYFILE", str(tmp_path / "key.pem"))
    with pytest.raises(ServeConfigError, match="both a certificate and its key"):
        local_serve_config(CPU_SERVE_CONFIG, {})
    with pytest.raises(ServeConfigError, match=r"key file .*key.pem is not a readable file"):
        local_serve_config(CPU_SERVE_CONFIG, {"tls_certfile": tmp_path / "cert.pem"})


def test_upscaler_serve_refuses_half_a_tls_pair_before_starting_ray(tmp_path, monkeypatch,
                                                                     capsys):
    """Exit 2 with the reason, in well under a second: no cluster is started for nothing."""
    from upscaler.commands.cli import main

    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # in case a Ray started after all
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # cmd_serve sets it: restored after
    (tmp_path / "cert.pem").write_text("PEM")
    assert main(["serve", "--no-dashboard", "--tls-cert", str(tmp_path / "cert.pem")]) == 2
    assert "--tls-key/UPSCALER_TLS_KEYFILE" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()


# --- Ray's control plane: closed by default ---------------------------------------------------
# The dashboard (8265) accepts job submissions, so whoever reaches it runs code on the cluster
# (ShadowRay, CVE-2023-48022). These fail if a deployment file opens it again.

SHIPPED = ["serve_app", "deployments", "upscaler", "docker", "k8s", "cluster.yaml", "Makefile",
           "serve_config.yaml", "pyproject.toml"]
DASHBOARD = 8265


def shipped_files() -> list[Path]:
    files: list[Path] = []
    for name in SHIPPED:
        path = REPO / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [f for f in files if "__pycache__" not in f.parts]


def test_no_shipped_file_turns_ray_auth_off():
    """Tests may run Ray without auth (the environment they give the services they start);
    nothing that ships may: RAY_AUTH_MODE=disabled in any spelling, or KubeRay's mode off."""
    off = re.compile(r"RAY_AUTH_MODE\W{0,6}(value\W{0,4})?disabled|mode:\s*['\"]?disabled",
                     re.I)
    assert len(shipped_files()) > 20
    for path in shipped_files():
        text = path.read_text(errors="replace")
        assert not off.search(text), f"{path.relative_to(REPO)} turns Ray's token auth off"
    assert re.search(r"^\s+RAY_AUTH_MODE=token", (REPO / "docker" / "Dockerfile").read_text(),
                     re.M)


def test_compose_publishes_the_dashboard_on_loopback_only():
    ports = load("docker/compose.yaml")["services"]["upscaler"]["ports"]
    dashboard = [p for p in map(str, ports) if p.split("/")[0].rsplit(":", 1)[-1] == "8265"]
    assert dashboard == ["127.0.0.1:8265:8265"]
    assert "8000:8000" in ports  # the API stays published


def test_cluster_head_runs_the_dashboard_on_loopback_with_token_auth():
    config = load("cluster.yaml")
    [start] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", start), start
    options = config["docker"]["run_options"]  # every node's container, `ray exec` included
    assert "-e RAY_AUTH_MODE=token" in options
    [token_path] = [o.split("=", 1)[1] for o in options if "RAY_AUTH_TOKEN_PATH=" in o]
    assert token_path in config["file_mounts"]  # the operator's token file, copied to each node
    assert not any(re.match(r"-e RAY_AUTH_TOKEN=", o) for o in options)  # no token committed


def _ports(rule: dict) -> set[int] | None:
    """The ports a NetworkPolicy rule admits (ranges with endPort expanded); None = every
    port."""
    if not rule.get("ports"):
        return None
    return {port for p in rule["ports"]
            for port in range(int(p["port"]), int(p.get("endPort", p["port"])) + 1)}


def _head_policy() -> dict:
    policies = yaml.safe_load_all((REPO / "k8s" / "networkpolicy.yaml").read_text())
    [head] = [p for p in policies if p and p["kind"] == "NetworkPolicy"
              and p["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "head"]
    return head


def test_the_operator_is_admitted_from_its_own_namespace_only():
    """A pod labelled as the KubeRay operator in any other namespace reaches nothing: the
    namespace and the label are one peer (both must hold), and the namespace is named."""
    peers = [peer for rule in _head_policy()["spec"]["ingress"] for peer in rule.get("from", [])]
    operator = [p for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/name") == "kuberay-operator"]
    assert operator
    for peer in operator:
        namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
        assert namespace.get("kubernetes.io/metadata.name"), peer  # not {} (every namespace)
    assert all(p.get("namespaceSelector") != {} for p in peers)


def test_no_shipped_config_opens_rays_client_server():
    """Ray's client server (10001) runs code for whoever connects. `upscaler serve` starts
    its cluster with ray.init, which starts none; `ray start --head` always does (Ray has no
    switch), so on Kubernetes the head's policy admits nobody to it, not even the cluster's
    own pods, and no config asks for it by name."""
    rules = _head_policy()["spec"]["ingress"]
    for rule in rules:
        ports = _ports(rule)
        assert ports is not None and 10001 not in ports, rule
    # The cluster's own traffic still flows: GCS, the dashboard, workers' ports.
    assert any({6379, 8265, 10002, 65535} <= (_ports(r) or set()) for r in rules)
    cli = (REPO / "upscaler" / "commands" / "cli.py").read_text()
    assert "ray_client_server_port" not in cli and "ray-client-server-port" not in cli
    for name in ("cluster.yaml", "k8s/rayservice.yaml", "docker/compose.yaml"):
        text = (REPO / name).read_text()
        assert not re.search(r"ray[-_]client[-_]server[-_]port|\b10001\b", text), name


def test_kuberay_runs_token_auth_behind_a_network_policy():
    manifest = load("k8s/rayservice.yaml")
    cluster = manifest["spec"]["rayClusterConfig"]
    auth = cluster["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]  # the Secret is made by hand
    head_labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    worker_labels = cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in spec["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # KubeRay sets both

    policies = [d for d in yaml.safe_load_all((REPO / "k8s" / "networkpolicy.yaml").read_text())
                if d and d["kind"] == "NetworkPolicy"]
    [head] = [p for p in policies
              if p["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "head"]
    selector = dict(head["spec"]["podSelector"]["matchLabels"])
    assert selector.pop("ray.io/node-type") == "head"
    assert selector and selector.items() <= head_labels.items()  # it selects our head pods
    assert "Ingress" in head["spec"]["policyTypes"]
    own_pods = {"podSelector": {"matchLabels": selector}}
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    rules = head["spec"]["ingress"]
    for rule in rules:
        ports = _ports(rule)
        if ports is None or DASHBOARD in ports:  # who reaches the dashboard
            assert rule.get("from"), "the dashboard admits anyone"
            for peer in rule["from"]:
                is_operator = peer.get("podSelector", {}).get("matchLabels") == operator
                assert is_operator or peer == own_pods, peer
                assert "ipBlock" not in peer
    assert any(DASHBOARD in (_ports(r) or ()) and all(
        p.get("podSelector", {}).get("matchLabels") == operator for p in r["from"])
        for r in rules)
    assert any(_ports(r) == {8000} and not r.get("from") for r in rules)  # the API
    for policy in policies:  # every Ray pod is covered, and by a label the templates carry
        labels = {k: v for k, v in policy["spec"]["podSelector"]["matchLabels"].items()
                  if k != "ray.io/node-type"}
        assert labels.items() <= worker_labels.items() and labels.items() <= head_labels.items()
    assert {p["spec"]["podSelector"]["matchLabels"]["ray.io/node-type"] for p in policies} == {
        "head", "worker"}
