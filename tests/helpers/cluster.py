"""A real multi-node Ray cluster on this machine, made of `ray start` processes as an operator
starts them: a CPU-only head (127.0.0.1, its own temp dir and ports) whose GCS keeps its state
in a Redis (GCS fault tolerance), GPU worker nodes (a logical GPU each) added and lost at will,
and job storage on moto's S3 server.

Each node runs in a process group of its own, so a node is lost exactly as a machine is
(SIGKILL to its raylet's group), and nothing but this cluster's processes is ever signalled.
The head is started without ``--block``: its monitor would end the whole head when one of its
processes dies, and the head-failure test kills the GCS server alone. Nothing restarts a killed
GCS outside KubeRay (whose head pod restarts): ``restart_gcs`` starts it again with its own
command line and environment, as that restart does."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpers.processes import free_port
from serve_app.deploy_options import CPU_NODE_RESOURCE

RAY = str(Path(sys.executable).with_name("ray"))
REDIS_SERVER = "/usr/bin/redis-server"
# Fake credentials for the fake endpoint (nothing real is read), in every node's environment.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_CONFIG_FILE": "/nonexistent"}
# A lost node is declared dead after 3 missed 1 s health checks (Ray's default: 5 of 3 s).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000",
                   "RAY_health_check_failure_threshold": "3"}


@dataclass
class Node:
    kind: str
    process: subprocess.Popen  # `ray start` (a session leader: its pid is the group's id)
    groups: list[int] = field(default_factory=list)  # process groups to signal at the end
    node_id: str | None = None


@contextmanager
def moto_s3() -> Iterator[dict]:
    """moto's S3 server on 127.0.0.1 and a bucket in it: the storage settings that reach it."""
    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
               "skip_instance_cache": True}
    bucket = f"b{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **options).mkdir(bucket)
    try:
        yield {"storage_url": f"s3://{bucket}/upscaler", "storage_options": options}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalCluster:
    """Start with ``start()``; ``close()`` ends every process it started (and no other)."""

    def __init__(self, env: dict[str, str], head_cpus: int = 4):
        self.root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths: short
        self.env = {**os.environ, **AWS_ENV, "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", **env}
        self.head_cpus = head_cpus
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"  # Ray's state API is served there
        self.redis_password = secrets.token_hex(16)
        self.nodes: list[Node] = []
        self._others: list[subprocess.Popen] = []  # redis, a restarted GCS, the app's driver
        self._gcs: tuple[list[str], dict[str, str]] | None = None

    # --- starting -------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        redis_port = free_port()
        self._spawn([REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--requirepass", self.redis_password],
                    "redis.log")
        self._wait_redis(redis_port)
        head_env = {**self.env, **FAST_NODE_DEATH,
                    "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}"}
        self._ray_start("head", ["--head", f"--port={self.gcs_port}",
                                 f"--redis-password={self.redis_password}",
                                 f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                                 # The CPU node the Ingress and its peers are held to.
                                 f"--resources={json.dumps({CPU_NODE_RESOURCE: 1})}",
                                 "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                 f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                                 f"--ray-client-server-port={free_port()}",
                                 f"--temp-dir={self.root / 'ray'}"], head_env, block=False)
        return self

    def add_gpu_node(self, cpus: int = 4, resources: dict[str, float] | None = None) -> Node:
        """A worker node with one (logical) GPU and ``resources`` (its node type's), joined
        and alive in Ray's node table."""
        declared = [f"--resources={json.dumps(resources)}"] if resources else []
        node = self._ray_start("gpu", [f"--address={self.address}", f"--num-cpus={cpus}",
                                       "--num-gpus=1", *declared], self.env, block=True)
        node.node_id = self._wait_new_node({n.node_id for n in self.nodes if n.node_id})
        return node

    def _ray_start(self, kind: str, args: list[str], env: dict[str, str],
                   block: bool) -> Node:
        ports = ["--node-ip-address=127.0.0.1", f"--node-manager-port={free_port()}",
                 f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}",
                 f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        log = open(self.root / f"{kind}-{len(self.nodes)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([RAY, "start", *args, *ports, *(["--block"] if block else [])],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        node = Node(kind, proc, [proc.pid])
        self.nodes.append(node)
        if not block and proc.wait(120) != 0:
            raise RuntimeError(f"ray start ({kind}) failed:\n{self.log(node)}")
        return node

    def _spawn(self, command: list[str], log_name: str,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.root / log_name, "ab") as log:
            proc = subprocess.Popen(command, env=env or self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._others.append(proc)
        return proc

    def _wait_redis(self, port: int) -> None:
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "-a", self.redis_password,
                              "--no-auth-warning", "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.2)

    # --- looking --------------------------------------------------------------------------
    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [n.__dict__ if hasattr(n, "__dict__") else n
                for n in list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")],
                                      raise_on_missing_output=False)]

    def _wait_new_node(self, known: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in self.alive_nodes():
                if not n["is_head_node"] and n["node_id"] not in known:
                    return n["node_id"]
            time.sleep(0.5)
        raise TimeoutError(f"no new node joined:\n{self.log(self.nodes[-1])}")

    @property
    def head_node_id(self) -> str:
        return next(n["node_id"] for n in self.alive_nodes() if n["is_head_node"])

    def actor_nodes(self) -> dict[str, set[str]]:
        """Alive Serve replicas by deployment: the node ids they run on."""
        from ray.util.state import list_actors

        found: dict[str, set[str]] = {}
        for actor in list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")],
                                 limit=1000, raise_on_missing_output=False):
            name = actor.class_name or ""
            if name.startswith("ServeReplica:"):
                deployment = name.split(":")[-1]
                found.setdefault(deployment, set()).add(actor.node_id)
        return found

    def log(self, node: Node) -> str:
        path = self.root / f"{node.kind}-{self.nodes.index(node)}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # --- failures -------------------------------------------------------------------------
    def kill_node(self, node: Node) -> None:
        """The machine is lost: every process of the node at once, no goodbye."""
        for group in node.groups:
            _killpg(group)
        node.process.wait(10)
        self.nodes.remove(node)

    def _pid_of(self, name: str, group: int) -> int:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != group:
                    continue
                argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if Path(argv0.decode()).name == name:
                return int(entry.name)
        raise LookupError(f"no {name} in process group {group}")

    def kill_gcs(self) -> None:
        """SIGKILL the head's GCS server alone (its raylet and the app keep running)."""
        pid = self._pid_of("gcs_server", self.nodes[0].groups[0])
        proc = Path(f"/proc/{pid}")
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        env = dict(e.decode().split("=", 1) for e in (proc / "environ").read_bytes().split(b"\0")
                   if b"=" in e)
        self._gcs = (argv, env)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def restart_gcs(self) -> None:
        """The GCS again, as it was started (same port, same Redis): it reloads the cluster's
        state from Redis and the raylets reconnect."""
        assert self._gcs, "kill_gcs first"
        argv, env = self._gcs
        proc = self._spawn(argv, "gcs-restarted.log", env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.alive_nodes():
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            assert proc.poll() is None, "the restarted GCS exited"
            assert time.monotonic() < deadline, "the restarted GCS did not answer"
            time.sleep(0.5)

    # --- the end --------------------------------------------------------------------------
    def close(self) -> None:
        for proc in reversed(self._others):
            _killpg(proc.pid)
        for node in self.nodes:
            for group in node.groups:
                _killpg(group)
        shutil.rmtree(self.root, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _killpg(group: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def start_app(cluster: LocalCluster, config: Path, port: int, log: Path,
              timeout: float = 300) -> subprocess.Popen:
    """`upscaler serve --ray-address` with a config, as an operator deploys onto a running
    cluster; returns once /api/health answers healthy."""
    from helpers.processes import REPO

    proc = cluster._spawn([sys.executable, "-m", "upscaler.commands.cli", "serve",
                           "--ray-address", cluster.address, "--config", str(config)],
                          log.name, {**cluster.env, "PYTHONPATH": str(REPO),
                                     "UPSCALER_PORT": str(port), "UPSCALER_HOST": "127.0.0.1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cluster.root / log.name).read_text()[-4000:]
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
            if r.status_code == 200 and r.json()["status"] == "healthy":
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError((cluster.root / log.name).read_text()[-4000:])
