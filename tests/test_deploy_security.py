"""Deployment files, secure by default: TLS between clients and the Serve proxies, and Ray's
control plane (dashboard, client server, token auth) closed in every shipped config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers.deploy_files import REPO, load

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


# --- Ray's TLS between nodes ----------------------------------------------------------------

RAY_TLS = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


def test_shipped_clusters_run_ray_with_tls_and_make_each_nodes_certificate():
    """cluster.yaml and the RayService: RAY_USE_TLS=1 and the three files on every Ray process
    (the autoscaler's too), each node's certificate made from the cluster's CA before Ray
    starts (`upscaler cluster certs --ca-dir`). Only compose (one machine) turns it off."""
    cluster = load("cluster.yaml")
    env = dict(o.removeprefix("-e ").split("=", 1) for o in cluster["docker"]["run_options"]
               if o.startswith("-e "))
    assert env["RAY_USE_TLS"] == "1" and all(env[v].startswith("/etc/upscaler/tls/")
                                             for v in RAY_TLS)
    [certs] = [c for c in cluster["setup_commands"] if "cluster certs" in c]
    ca_mount = re.search(r"--ca-dir (\S+)", certs)[1]
    assert ca_mount in cluster["file_mounts"] and "/etc/upscaler/tls" in certs

    rc = load("k8s/rayservice.yaml")["spec"]["rayClusterConfig"]
    pods = [rc["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in rc["workerGroupSpecs"])]
    for env_list in [rc["autoscalerOptions"]["env"],
                     *(c["env"] for pod in pods for c in pod["containers"])]:
        pod_env = {e["name"]: e.get("value") for e in env_list}
        assert pod_env["RAY_USE_TLS"] == "1" and set(RAY_TLS) <= set(pod_env)
    for pod in pods:
        [init] = pod["initContainers"]
        assert "cluster certs" in " ".join(init["command"]) and "--ca-dir" in " ".join(
            init["command"])
        secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
        assert secrets == ["upscaler-ray-ca"]

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^\s+RAY_USE_TLS=1\b", dockerfile, re.M)
    off = re.compile(r"RAY_USE_TLS\W{0,6}(value\W{0,4})?['\"]?(0|false)\b", re.I)
    offenders = [str(p.relative_to(REPO)) for p in shipped_files()
                 if off.search(p.read_text(errors="replace"))]
    assert offenders == ["docker/compose.yaml"]
