"""A Ray cluster of two nodes with TLS between them (certificates from `upscaler cluster certs`)
and token auth: a node with a certificate the cluster's CA signed joins, one with another CA's
cannot; and `upscaler serve --ray-address` on it refuses local job storage."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.processes import REPO, free_port

from upscaler.commands.cluster_certs import NodeFiles, write_certs

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class TlsCluster:
    address: str
    base: Path
    token: str
    ca_dir: Path
    node_ip: str
    processes: list[subprocess.Popen]

    def env(self, certs: NodeFiles) -> dict[str, str]:
        return {**os.environ, **certs.ray_environment(), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONPATH": str(REPO)}

    def certs(self, name: str, ca_dir: Path | None = None) -> NodeFiles:
        return write_certs(self.base / name, name=name, ips=[self.node_ip], ca_dir=ca_dir)

    def start(self, name: str, args: list[str], certs: NodeFiles) -> subprocess.Popen:
        log = (self.base / f"{name}.log").open("w")
        process = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                                   env=self.env(certs), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def alive_nodes(self, certs: NodeFiles, timeout: float = 30) -> int:
        """Alive nodes, as `ray status` reads them from the GCS over TLS."""
        out = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env(certs),
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-2000:]
        if "Active:" not in out.stdout:  # the autoscaler's first report is seconds away
            return 0
        active = out.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return len(re.findall(r"^\s+1 node_", active, re.M))

    def wait_nodes(self, certs: NodeFiles, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if exited := [p for p in self.processes if p.poll() is not None]:
                logs = "".join(f"\n--- {log.name}\n" + log.read_text()[-2000:]
                               for log in sorted(self.base.glob("*.log")))
                raise RuntimeError(f"{len(exited)} `ray start` exited:{logs}")
            try:
                seen: int | str = self.alive_nodes(certs)
            except AssertionError as exc:  # the head's GCS not answering yet
                seen = str(exc)[-500:]
            if seen == count:
                return
            assert time.monotonic() < deadline, f"{seen} nodes, not {count}"
            time.sleep(1)


def _stop(processes: list[subprocess.Popen], base: Path) -> None:
    """Exactly this cluster's processes: each `ray start` group, then any process left whose
    environment names this cluster's own folder (its certificates)."""
    for process in processes:
        with_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5  # `ray start --block` stops its node's processes
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with_group(process.pid, signal.SIGKILL)
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(base).encode() in (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def with_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    """A head and a GPU worker (a logical GPU), both with node certificates of one CA, mutual
    TLS and token auth on every Ray process."""
    from ray._private.services import get_node_ip_address

    base = Path(tempfile.mkdtemp(prefix="rtls", dir="/tmp"))
    # Ray connects to its nodes by their IP: it is in each node's certificate (127.0.0.1 too).
    node_ip = get_node_ip_address()
    cluster = TlsCluster(f"{node_ip}:{free_port()}", base, secrets.token_hex(16),
                         base / "head", node_ip, [])
    head = cluster.certs("head")  # makes the CA in base/head
    try:
        cluster.start("head", ["--head", f"--port={cluster.address.rsplit(':', 1)[1]}",
                               f"--temp-dir={base}/ray", "--num-cpus=1",
                               "--include-dashboard=false",
                               '--resources={"upscaler_cpu_node": 1}'], head)
        cluster.wait_nodes(head, 1, timeout=60)
        cluster.start("worker", [f"--address={cluster.address}", "--num-cpus=1",
                                 "--num-gpus=1"], cluster.certs("worker", cluster.ca_dir))
        cluster.wait_nodes(head, 2, timeout=60)
        yield cluster
    finally:
        _stop(cluster.processes, base)
        shutil.rmtree(base, ignore_errors=True)


def test_a_node_with_the_cluster_cas_certificate_joins(tls_cluster):
    """The worker (its certificate signed by the CA) registered; a client with its own
    CA-signed certificate reads the cluster over TLS."""
    client = tls_cluster.certs("client", tls_cluster.ca_dir)
    assert tls_cluster.alive_nodes(client) == 2


def test_a_node_with_another_cas_certificate_cannot_join(tls_cluster):
    """A self-made CA's node: the head's gRPC refuses the handshake, so the node never
    registers (its `ray start` gives up), and no client with it reads the cluster."""
    stranger = tls_cluster.certs("stranger")  # its own CA in base/stranger
    process = tls_cluster.start("stranger", [f"--address={tls_cluster.address}",
                                             "--num-cpus=1", "--num-gpus=1"], stranger)
    reader = subprocess.Popen([RAY, "status", f"--address={tls_cluster.address}"],
                              env=tls_cluster.env(stranger), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    tls_cluster.processes.append(reader)
    # The good worker registered within seconds; this one's handshakes fail at once.
    deadline = time.monotonic() + 12
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    head = NodeFiles(tls_cluster.base / "head" / "head.crt",
                     tls_cluster.base / "head" / "head.key",
                     tls_cluster.base / "head" / "ca.crt")
    assert tls_cluster.alive_nodes(head) == 2
    assert process.poll() != 0, "the stranger's `ray start` went through"
    # A client with the stranger's certificate read nothing either (failed, or still waiting).
    assert (done := reader.poll()) != 0 and (done is None or "Active:" not in reader.stdout.read())


def test_upscaler_serve_refuses_local_storage_on_the_cluster(tls_cluster, tmp_path):
    """Two nodes, each (on real machines) with its own disk: the default storage under
    data_dir stops `upscaler serve --ray-address` at start, naming the setting to change."""
    env = tls_cluster.env(tls_cluster.certs("serve", tls_cluster.ca_dir))
    env = {k: v for k, v in env.items() if not k.startswith("UPSCALER_")}
    out = subprocess.run(
        [sys.executable, "-m", "upscaler.commands.cli", "serve", "--ray-address",
         tls_cluster.address, "--data-dir", str(tmp_path), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-1000:] + out.stderr[-3000:]
    assert "this Ray cluster has 2 nodes" in out.stderr
    assert "storage_url" in out.stderr and "UPSCALER_STORAGE_URL" in out.stderr
    assert "upscaler is up" not in out.stdout


BUILD_ON_CLUSTER = """
import sys, ray
from serve_app.app import build_app
from upscaler.errors import StorageError
ray.init(address=sys.argv[1], logging_level="ERROR")
try:
    build_app({"data_dir": sys.argv[2]})
except StorageError as exc:
    print("REFUSED", exc.code, exc.message)
"""


def test_serve_deploys_builder_refuses_local_storage_on_the_cluster(tls_cluster, tmp_path):
    """`serve deploy`/`serve run` call the builder inside the cluster: the same refusal."""
    env = tls_cluster.env(tls_cluster.certs("builder", tls_cluster.ca_dir))
    out = subprocess.run([sys.executable, "-c", BUILD_ON_CLUSTER, tls_cluster.address,
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert "REFUSED storage_not_shared" in out.stdout, out.stderr[-3000:]
    assert "storage_url" in out.stdout
