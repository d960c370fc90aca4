"""Safe to put on a network, and GPUs on demand: one real `upscaler serve` as shipped (Ray's
token auth on: the test does not touch RAY_AUTH_MODE) with HTTPS from a certificate made here,
and FLUX allowed to scale to zero. The API answers only over verified TLS; the dashboard, which
runs any code it is sent, answers only with the token; FLUX starts for the job that needs it and
stops again once idle. One service start for both (each start costs some 30 s here)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.api import download, eventually, upload, wait_for_job
from helpers.config import FLUX_ENV
from helpers.images import photo, png_bytes
from helpers.processes import free_port
from helpers.service import Service, running_service

pytestmark = pytest.mark.slow
COLD_START_S = 45


def write_self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (as an IP SAN, which hostname checks use) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upscaler test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class Shipped:
    svc: Service
    home: Path  # the service's $HOME, where Ray keeps its token
    dashboard: str


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, full_models_root) -> Iterator[Shipped]:
    folder = tmp_path_factory.mktemp("shipped")
    home = folder / "home"  # Ray writes its token here, never to the real home
    home.mkdir()
    dashboard = free_port()
    env = {"HOME": str(home), **FLUX_ENV, "UPSCALER_FLUX_MIN_REPLICAS": "0",
           "UPSCALER_FLUX_MAX_REPLICAS": "1", "UPSCALER_FLUX_IDLE_S": "2",
           "UPSCALER_FLUX_COLD_START_S": str(COLD_START_S)}
    # start_service polls /api/health over HTTPS, trusting only this certificate.
    with running_service(folder / "data", full_models_root, folder / "service.log", env,
                         timeout=240, tls=write_self_signed(folder), token_auth=True,
                         dashboard_port=dashboard) as svc:
        yield Shipped(svc, home, f"http://127.0.0.1:{dashboard}")
    assert svc.process.returncode == 0, svc.log()[-3000:]  # shutdown works with auth on


def test_token_auth_on_by_default_and_the_api_over_tls(shipped):
    svc, home, dashboard = shipped.svc, shipped.home, shipped.dashboard
    assert svc.url.startswith("https://127.0.0.1:")
    with svc.client() as client:
        assert client.get("/api/health").json()["status"] == "healthy"
        r = upload(client, png_bytes(photo("rocket", (32, 24))), model="tiny-rrdb",
                   upscale_factor=2)
        assert r.status_code == 200 and r.json()["outputSize"] == {"width": 64,
                                                                   "height": 48}
        # HSTS on every answer under TLS: the app's, and the proxy's own (/-/healthz).
        for answer in (r, client.get("/-/healthz"), client.get(r.json()["outputUrl"])):
            assert answer.headers["strict-transport-security"] == "max-age=31536000"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{svc.url}/api/health")  # the system's CAs do not vouch for it
    with pytest.raises(httpx.TransportError):  # no plain HTTP beside it
        httpx.get(svc.url.replace("https://", "http://") + "/api/health")

    token_file = home / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert token and token_file.stat().st_mode & 0o077 == 0  # owner-only
    jobs = f"{dashboard}/api/jobs/"  # job submission: running code on the cluster
    assert httpx.get(jobs).status_code == 401
    assert httpx.get(jobs, headers={"Authorization": "Bearer not-the-token"}).status_code \
        == 403
    assert httpx.get(jobs, headers={"Authorization": f"Bearer {token}"}).status_code == 200

    # What the printed advice says works: Serve's CLI with RAY_AUTH_MODE=token and the
    # token where Ray looks for it.
    serve_cli = Path(sys.executable).with_name("serve")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    out = subprocess.run([str(serve_cli), "status", "--address", dashboard], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "RUNNING" in out.stdout, out.stdout + out.stderr

    log = svc.log()
    assert f"API:       {svc.url}/api" in log and f"Docs:      {svc.url}/docs" in log
    assert f"Dashboard: {dashboard}" in log and f"the token in {token_file}" in log


def flux_status(client: httpx.Client) -> dict:
    return client.get("/api/health").json()["engines"]["flux"]


def test_flux_starts_for_a_job_and_scales_back_to_zero(shipped):
    with shipped.svc.client() as client:
        # Nothing runs FLUX, and asking for health does not start it.
        eventually(lambda: flux_status(client).get("state") == "scaled_to_zero", timeout=60)
        health = client.get("/api/health").json()
        assert health["status"] == "healthy" and flux_status(client)["replicas"] == 0

        answer = upload(client, png_bytes(photo("coffee", (64, 48))), engine="flux",
                        tile_size=64, tile_padding=16, mask_blur=4, steps=2, denoise=0.3,
                        upscale_factor=2, upscale_model="tiny-rrdb", wait=0)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] == "queued" and body["estimatedTime"] >= COLD_START_S

        status = wait_for_job(client, body["jobId"], timeout=300)
        assert status["status"] == "completed", status
        assert download(client, status["output_url"]).size == (128, 96)
        # Idle again: Serve stops the replica (flux_idle_s after its last request).
        eventually(lambda: flux_status(client).get("state") == "scaled_to_zero", timeout=120,
                   every=2)
