"""Mutual TLS and the topic ACL from deploy/mosquitto/, on a real mosquitto with certificates made here."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_node.config import MqttConfig
from edge_node.errors import ConfigError
from edge_node.tls import ssl_context
from tests.brokers import Mosquitto
from tests.conftest import REPO
from tests.pki import Authority

pytestmark = pytest.mark.timeout(60)

DEPLOY = REPO / "deploy" / "mosquitto"


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
