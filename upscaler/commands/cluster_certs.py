"""`upscaler cluster certs`: the certificates Ray's TLS between nodes needs. A cluster CA (made
once, kept by the operator) and node certificates it signs; every Ray process of every node runs
with ``RAY_USE_TLS=1`` and ``RAY_TLS_SERVER_CERT``/``_KEY``/``RAY_TLS_CA_CERT`` naming them.
Ray's gRPC is mutual TLS: a node whose certificate the CA did not sign cannot join.

One node certificate serves as both server and client certificate (Ray uses the same pair for
both ends), so it carries both extended key usages. Clients check the server's address against
its SANs: a node's certificate names the addresses it is reached at (its IP, its DNS names);
nodes whose IPs are known only at start make theirs then, from the CA (``--ca-dir``).
Design: docs/design/cluster.md
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
# Every node reaches its own processes on loopback.
DEFAULT_IPS = ("127.0.0.1",)
DEFAULT_DNS = ("localhost",)


class CertsError(ValueError):
    pass


@dataclass(frozen=True)
class NodeFiles:
    """What a node's Ray processes need (the RAY_TLS_* variables name these)."""

    cert: Path
    key: Path
    ca_cert: Path

    def ray_environment(self) -> dict[str, str]:
        return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(self.cert),
                "RAY_TLS_SERVER_KEY": str(self.key), "RAY_TLS_CA_CERT": str(self.ca_cert)}


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast handshakes; gRPC's BoringSSL has it


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its mode (never a moment world-readable), replacing what --force allows.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # whatever the umask took away


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    # Five minutes back: nodes whose clocks lag a little still accept a fresh certificate.
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def make_ca(name: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_node_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
                   dns: list[str], ips: list[str],
                   days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    addresses = [ipaddress.ip_address(ip) for ip in ips]
    sans = [*(x509.DNSName(d) for d in dns), *(x509.IPAddress(a) for a in addresses)]
    start, end = _validity(days)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(min(end, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            # Ray's gRPC uses the one pair both to serve and to connect.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CertsError(f"{ca_dir / CA_KEY} is not the key of {ca_dir / CA_CERT}")
    return cert, key


def write_certs(out: Path, *, name: str = "node", dns: list[str] | None = None,
                ips: list[str] | None = None, ca_dir: Path | None = None, days: int = 365,
                force: bool = False) -> NodeFiles:
    """The node certificate ``out/NAME.crt`` (key ``NAME.key``, 0600) signed by the CA in
    ``ca_dir``; without ``ca_dir`` the CA is ``out``'s own, made there first if absent. The CA
    certificate is copied beside the node's so one folder holds what RAY_TLS_* name."""
    ips = list(dict.fromkeys([*DEFAULT_IPS, *(ips or [])]))
    for ip in ips:  # before anything is written
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CertsError(f"not an IP address: {ip!r}") from None
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    node_cert, node_key = out / f"{name}.crt", out / f"{name}.key"
    if not force and (existing := [p for p in (node_cert, node_key) if p.exists()]):
        raise CertsError(f"{', '.join(map(str, existing))} already exist: pass --force to "
                         "replace them")
    if ca_dir is None:
        ca_dir = out
        if not (out / CA_CERT).exists() and not (out / CA_KEY).exists():
            cert, key = make_ca("upscaler cluster CA", days=max(days, 3650))
            _write(out / CA_KEY, _key_pem(key), 0o600)
            _write(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if not (ca_dir / CA_CERT).is_file() or not (ca_dir / CA_KEY).is_file():
        raise CertsError(f"{ca_dir} holds no CA ({CA_CERT} and {CA_KEY}): make one with "
                         "`upscaler cluster certs DIR` first")
    ca_cert, ca_key = _load_ca(ca_dir)
    dns = list(dict.fromkeys([*DEFAULT_DNS, *(dns or [])]))
    cert, key = make_node_cert(ca_cert, ca_key, name, dns, ips, days)
    _write(node_key, _key_pem(key), 0o600)
    _write(node_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if ca_dir.resolve() != out.resolve():
        (out / CA_CERT).unlink(missing_ok=True)
        shutil.copyfile(ca_dir / CA_CERT, out / CA_CERT)
    return NodeFiles(node_cert.resolve(), node_key.resolve(), (out / CA_CERT).resolve())


def cmd_cluster_certs(args: argparse.Namespace) -> int:
    try:
        files = write_certs(args.out, name=args.name, dns=args.dns, ips=args.ip,
                            ca_dir=args.ca_dir, days=args.days, force=args.force)
    except (CertsError, OSError) as exc:
        print(f"upscaler cluster certs: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {files.cert} and {files.key} (signed by {files.ca_cert}); run every Ray "
          "process of the node with:")
    for var, value in files.ray_environment().items():
        print(f"  {var}={value}")
    return 0


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:
    cluster_p = sub.add_parser("cluster", help="what a Ray cluster of several nodes needs")
    cluster_sub = cluster_p.add_subparsers(dest="cluster_command", required=True)
    certs_p = cluster_sub.add_parser(
        "certs", help="a cluster CA and node certificates for Ray's TLS between nodes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    certs_p.add_argument("out", type=Path, help="folder to write into (made 0700)")
    certs_p.add_argument("--name", default="node", help="the files' stem and the certificate's "
                         "common name (default: node)")
    certs_p.add_argument("--dns", action="append", metavar="NAME",
                         help="a DNS name the node is reached at (repeat; localhost always)")
    certs_p.add_argument("--ip", action="append", metavar="ADDRESS",
                         help="an IP the node is reached at (repeat; 127.0.0.1 always)")
    certs_p.add_argument("--ca-dir", type=Path, metavar="DIR",
                         help=f"sign with the CA in DIR ({CA_CERT}, {CA_KEY}) instead of OUT's "
                         "own (made there if absent)")
    certs_p.add_argument("--days", type=int, default=365, help="node certificate validity")
    certs_p.add_argument("--force", action="store_true", help="replace an existing node "
                         "certificate and key")
    certs_p.set_defaults(func=cmd_cluster_certs)
