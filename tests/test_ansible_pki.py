"""broker.yml's PKI play for real: a CA, the server and one client certificate per node, idempotent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
INVENTORY = """all:
  children:
    brokers:
      hosts: {}
    nodes:
      hosts:
        a.lan: {node_id: pi-a}
        b.lan: {node_id: pi-b}
"""


def _run(tmp: Path) -> int:
    cmd = [str(PLAYBOOK), "-i", str(tmp / "inv.yml"), "broker.yml", "-e", f"ghostpi_pki_dir={tmp / 'pki'}",
           "-e", "ghostpi_broker_host=broker.lan", "-e", f"ansible_python_interpreter={sys.executable}"]  # fmt: skip
    env = {**os.environ, "ANSIBLE_HOME": str(tmp / "ansible-home"), "ANSIBLE_NOCOLOR": "1"}
    out = subprocess.run(cmd, cwd=REPO / "deploy" / "ansible", env=env, capture_output=True, text=True, timeout=300)
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
    for name in ("pi-a", "pi-b", "operator", "dashboard"):
        cert = _cert(pki / "nodes" / f"{name}.crt")
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert (pki / "nodes" / f"{name}.key").stat().st_mode & 0o077 == 0
    server = _cert(pki / "server.crt")
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert _run(tmp_path) == 0  # keys and certificates are kept on the second run
