"""`upscaler cluster certs`: a cluster CA and node certificates for Ray's TLS between nodes."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from upscaler.commands.cli import main


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - InvalidSignature, or a wrong issuer (ValueError)
        return False
    return True


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_makes_a_ca_and_a_node_certificate_it_signed(tmp_path, capsys):
    out = tmp_path / "tls"
    assert main(["cluster", "certs", str(out), "--ip", "10.0.0.7", "--dns", "head.svc"]) == 0
    ca, node = _cert(out / "ca.crt"), _cert(out / "node.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _signed_by(node, ca) and node.issuer == ca.subject
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.7")}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "head.svc"}
    # Ray's gRPC uses the one pair to serve and to connect: both usages.
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert _mode(out / "ca.key") == _mode(out / "node.key") == 0o600
    assert _mode(out) == 0o700
    printed = capsys.readouterr().out
    for line in ("RAY_USE_TLS=1", f"RAY_TLS_SERVER_CERT={out / 'node.crt'}",
                 f"RAY_TLS_SERVER_KEY={out / 'node.key'}", f"RAY_TLS_CA_CERT={out / 'ca.crt'}"):
        assert line in printed
    assert "PRIVATE KEY" not in printed


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "tls"
    assert main(["cluster", "certs", str(out)]) == 0
    first = (out / "node.key").read_bytes()
    assert main(["cluster", "certs", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "node.key").read_bytes() == first
    ca_before = (out / "ca.crt").read_bytes()
    assert main(["cluster", "certs", str(out), "--force"]) == 0
    assert (out / "node.key").read_bytes() != first
    assert (out / "ca.crt").read_bytes() == ca_before  # the cluster's CA is kept
    assert _mode(out / "node.key") == 0o600


def test_a_node_signs_its_own_from_the_cluster_ca(tmp_path):
    """What a node whose IP is known only at start does (an init container, setup_commands):
    its certificate from the CA's folder, the CA certificate copied beside it."""
    ca_dir, node_dir = tmp_path / "ca", tmp_path / "node"
    assert main(["cluster", "certs", str(ca_dir), "--name", "head"]) == 0
    assert main(["cluster", "certs", str(node_dir), "--ca-dir", str(ca_dir), "--name", "gpu-1",
                 "--ip", "10.1.2.3"]) == 0
    assert not (node_dir / "ca.key").exists()  # the CA's key stays where it was
    ca = _cert(node_dir / "ca.crt")
    assert ca == _cert(ca_dir / "ca.crt") and _signed_by(_cert(node_dir / "gpu-1.crt"), ca)
    other = tmp_path / "other"
    assert main(["cluster", "certs", str(other)]) == 0
    assert not _signed_by(_cert(other / "node.crt"), ca)  # another CA's node: not ours
    key = _cert(node_dir / "gpu-1.crt").public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["cluster", "certs", str(tmp_path / "a"), "--ip", "not-an-ip"]) == 2
    assert "not an IP address" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written
    assert main(["cluster", "certs", str(tmp_path / "b"), "--ca-dir", str(tmp_path)]) == 2
    assert "holds no CA" in capsys.readouterr().err


def test_the_help_names_rays_variables(capsys):
    with pytest.raises(SystemExit):
        main(["cluster", "certs", "--help"])
    assert "RAY_USE_TLS" in capsys.readouterr().out
