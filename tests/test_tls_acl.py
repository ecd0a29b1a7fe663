"""Mutual TLS and the topic ACL from deploy/mosquitto/, on a real mosquitto with certificates made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edge_node.config import MqttConfig
from edge_node.errors import ConfigError
from edge_node.tls import ssl_context
from tests.brokers import Mosquitto
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(60)

DEPLOY = REPO / "deploy" / "mosquitto"


# --- a tiny PKI ------------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@dataclass
class Authority:
    """A CA that issues server and client certificates into ``folder``."""

    folder: Path
    cn: str = "GhostPi test CA"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.cn))
            .issuer_name(_name(self.cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.folder / "ca.crt"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.folder / f"{cn}.crt"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_file, _write_key(key, self.folder / f"{cn}.key")


def _deploy_conf(pki: Authority, acl: Path) -> str:
    """deploy/mosquitto/mosquitto.conf with this test's files and port (the fixture writes the listener)."""
    server_cert, server_key = pki.issue("localhost", server=True)
    paths = {"cafile": pki.ca_file, "certfile": server_cert, "keyfile": server_key, "acl_file": acl}
    lines = []
    for raw in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(("listener", "protocol")):
            continue
        key = line.split()[0]
        lines.append(f"{key} {paths[key]}" if key in paths else line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path: Path, pki: Authority) -> Iterator[Mosquitto]:
    acl = tmp_path / "ghostpi.acl"
    acl.write_text((DEPLOY / "ghostpi.acl").read_text())
    conf = _deploy_conf(pki, acl).replace("per_listener_settings false\n", "")
    b = Mosquitto(tmp_path / "mosquitto", extra_conf=conf)
    # per_listener_settings must precede the listener, so it goes first in the file.
    original = b.write_conf

    def write_conf() -> None:
        original()
        b.conf_path.write_text("per_listener_settings false\n" + b.conf_path.read_text())

    b.write_conf = write_conf  # type: ignore[method-assign]
    b.start()
    try:
        yield b
    finally:
        b.stop()


# --- clients ---------------------------------------------------------------------------------------------


class Client:
    """A paho client using the node's own TLS context (edge_node.tls.ssl_context)."""

    def __init__(self, port: int, cfg: MqttConfig, name: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.settled = threading.Event()  # connected, refused or dropped
        self.refused: str | None = None
        self._lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}")
        ctx = ssl_context(cfg)
        assert ctx is not None
        self.c.tls_set_context(ctx)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda *_: self.settled.set()
        try:
            self.c.connect("localhost", port, keepalive=10)
        except (ssl.SSLError, OSError) as exc:
            self.refused = repr(exc)
            self.settled.set()
            return
        self.c.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object = None) -> None:
        if not getattr(rc, "is_failure", True):
            self.connected.set()
        else:
            self.refused = str(rc)
        self.settled.set()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topic: str) -> None:
        result, _ = self.c.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def got(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if (topic, payload) in self.messages:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def connect(broker: Mosquitto, pki: Authority) -> Iterator[object]:
    clients: list[Client] = []

    def make(cn: str | None, *, ca: Authority | None = None) -> Client:
        issuer = ca or pki
        cert, key = issuer.issue(cn) if cn else (None, None)
        cfg = MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=cert, key_file=key)
        client = Client(broker.port, cfg, cn or "anon")
        clients.append(client)
        client.settled.wait(5)
        return client

    yield make
    for client in clients:
        client.close()


# --- tests -----------------------------------------------------------------------------------------------


def test_ssl_context_is_strict_by_default(pki: Authority) -> None:
    cert, key = pki.issue("n1")
    ctx = ssl_context(MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=cert, key_file=key))
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    insecure = ssl_context(MqttConfig(ca_file=pki.ca_file, tls_insecure=True))
    assert insecure is not None and not insecure.check_hostname and insecure.verify_mode == ssl.CERT_REQUIRED
    assert ssl_context(MqttConfig()) is None


def test_ssl_context_names_the_setting_to_fix(pki: Authority, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"EDGE_MQTT__CA_FILE=.*no such file"):
        ssl_context(MqttConfig(ca_file=tmp_path / "missing.crt"))
    cert, _ = pki.issue("n1")
    with pytest.raises(ConfigError, match="EDGE_MQTT__KEY_FILE"):
        ssl_context(MqttConfig(ca_file=pki.ca_file, cert_file=cert, key_file=tmp_path / "missing.key"))
    _, other_key = pki.issue("n2")
    with pytest.raises(ConfigError, match="key belongs to the certificate"):
        ssl_context(MqttConfig(ca_file=pki.ca_file, cert_file=cert, key_file=other_key))


def test_node_with_a_valid_certificate_works(connect) -> None:  # type: ignore[no-untyped-def]
    dashboard = connect("dashboard")
    operator = connect("operator")
    node = connect("n1")
    assert dashboard.connected.is_set() and node.connected.is_set() and operator.connected.is_set()
    dashboard.subscribe("ghostpi/#")
    node.subscribe("ghostpi/n1/control")
    node.subscribe("ghostpi/all/control")
    node.publish("ghostpi/n1/predictions", b"p1")
    assert dashboard.got("ghostpi/n1/predictions", b"p1")
    operator.publish("ghostpi/n1/control", b"c1")
    operator.publish("ghostpi/all/control", b"c2")
    assert node.got("ghostpi/n1/control", b"c1") and node.got("ghostpi/all/control", b"c2")


def test_clients_without_a_trusted_certificate_are_refused(connect, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    anonymous = connect(None)
    rogue = connect("n1", ca=Authority(tmp_path / "rogue", cn="rogue CA"))
    assert not anonymous.connected.is_set()
    assert not rogue.connected.is_set()


def test_acl_confines_each_identity(connect) -> None:  # type: ignore[no-untyped-def]
    dashboard = connect("dashboard")
    operator = connect("operator")
    n1, n2 = connect("n1"), connect("n2")
    dashboard.subscribe("ghostpi/#")
    n2.subscribe("ghostpi/n2/control")
    n1.subscribe("ghostpi/n2/#")  # eavesdropping: the broker delivers nothing
    forged = [
        (n1, "ghostpi/n2/predictions"),  # another node's telemetry
        (n1, "ghostpi/n2/control"),  # commands: operators only
        (n1, "ghostpi/all/control"),
        (n1, "ghostpi/n1/control"),
        (dashboard, "ghostpi/n2/control"),
        (operator, "ghostpi/n2/predictions"),
    ]
    for client, topic in forged:
        client.publish(topic, b"forged")
    n2.publish("ghostpi/n2/events", b"real")
    operator.publish("ghostpi/n2/control", b"legit")
    # The allowed messages were sent last; once they are in, the forged ones would have been too.
    assert dashboard.got("ghostpi/n2/events", b"real")
    assert n2.got("ghostpi/n2/control", b"legit")
    assert dashboard.got("ghostpi/n2/control", b"legit")
    assert not [m for m in dashboard.messages if m[1] == b"forged"]
    assert not [m for m in n2.messages if m[1] == b"forged"]
    assert n1.messages == []
