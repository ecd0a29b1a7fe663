"""broker.yml's PKI play for real: a CA, the server and one client certificate per node and tool identity,
idempotent; node ids that would take a tool's identity are refused before any key is made."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.paths import REPO

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
INVENTORY = """all:
  children:
    brokers:
      hosts: {}
    nodes:
      hosts:
        a.lan: {node_id: pi-a}
        b.lan: {}
"""
TOOLS = ("operator", "rollout", "dashboard", "viewer", "homeassistant", "recorder")


def _playbook(tmp: Path, **extra: object) -> subprocess.CompletedProcess[str]:
    variables = {
        "ghostpi_pki_dir": str(tmp / "pki"),
        "ghostpi_broker_host": "10.1.2.3",  # an IP-addressed broker
        "ghostpi_broker_extra_names": ["broker.lan", "fd00::53"],
        "ansible_python_interpreter": sys.executable,
        **extra,
    }
    cmd = [str(PLAYBOOK), "-i", str(tmp / "inv.yml"), "broker.yml", "-e", json.dumps(variables)]
    env = {**os.environ, "ANSIBLE_HOME": str(tmp / "ansible-home"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd, cwd=REPO / "deploy" / "ansible", env=env, capture_output=True, text=True, timeout=300)


def _run(tmp: Path) -> int:
    out = _playbook(tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", out.stdout)
    assert recap, out.stdout[-2000:]
    return int(recap.group(1))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fleet_pki(tmp_path: Path) -> None:
    if not PLAYBOOK.exists():
        pytest.skip("ansible is not installed (dev extra)")
    (tmp_path / "inv.yml").write_text(INVENTORY)
    assert _run(tmp_path) > 0
    pki = tmp_path / "pki"
    ca = _cert(pki / "ca.crt")
    for name in ("pi-a", "b.lan", *TOOLS):  # b.lan has no node_id: its inventory name is the node id
        cert = _cert(pki / "nodes" / f"{name}.crt")
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert (pki / "nodes" / f"{name}.key").stat().st_mode & 0o077 == 0
    assert sorted(p.stem for p in (pki / "nodes").glob("*.crt")) == sorted(("pi-a", "b.lan", *TOOLS))
    server = _cert(pki / "server.crt")
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("10.1.2.3", "fd00::53")]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert _run(tmp_path) == 0  # keys and certificates are kept on the second run


@pytest.mark.parametrize(
    ("hosts", "extra", "message"),
    [
        ("a.lan: {node_id: operator}", {}, "node_id operator: "),
        ("a.lan: {node_id: Dashboard}", {}, "node_id Dashboard: "),
        ("a.lan: {node_id: all}", {}, "node_id all: "),
        ("a.lan: {node_id: alice}", {"ghostpi_viewer_identities": ["viewer", "alice"]}, "node_id alice: "),
        ("a.lan: {node_id: cam}\n        b.lan: {node_id: CAM}", {}, "unique in the inventory"),
        ("a.lan: {node_id: 'a/b'}", {}, "node_id a/b: "),
    ],
    ids=["operator", "dashboard-any-case", "all", "an-added-viewer", "duplicate", "not-a-topic-level"],
)
def test_node_ids_that_would_take_another_identity_are_refused(
    tmp_path: Path, hosts: str, extra: dict[str, object], message: str
) -> None:
    """broker.yml would otherwise issue that node the certificate of a tool (or of another node)."""
    if not PLAYBOOK.exists():
        pytest.skip("ansible is not installed (dev extra)")
    (tmp_path / "inv.yml").write_text(INVENTORY.replace("a.lan: {node_id: pi-a}\n        b.lan: {}", hosts))
    out = _playbook(tmp_path, **extra)
    assert out.returncode != 0
    assert message in out.stdout, out.stdout[-3000:]
    assert not (tmp_path / "pki").exists()  # refused before any key was made
