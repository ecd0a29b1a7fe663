"""Mutual TLS and the topic ACL from deploy/mosquitto/, on a real mosquitto with certificates made here."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_node.config import MqttConfig
from edge_node.errors import ConfigError
from edge_node.mqtt import ssl_context
from edge_node.node.hass import discovery_message
from tests.support.brokers import Mosquitto, tls_broker
from tests.support.homeassistant import select_command
from tests.support.nodeproc import NodeProcess
from tests.support.paths import REPO, clean_env
from tests.support.pki import Authority
from tests.support.tlsclient import DENIED, OK, Client

pytestmark = pytest.mark.timeout(60)

DEPLOY = REPO / "deploy" / "mosquitto"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path: Path, pki: Authority) -> Iterator[Mosquitto]:
    acl = tmp_path / "ghostpi.acl"
    acl.write_text((DEPLOY / "ghostpi.acl").read_text())
    b = tls_broker(tmp_path / "mosquitto", DEPLOY / "mosquitto.conf", acl, pki).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def connect(broker: Mosquitto, pki: Authority) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(
        cn: str | None,
        *,
        ca: Authority | None = None,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> Client:
        issuer = ca or pki
        cert, key = issuer.issue(cn) if cn else (None, None)
        cfg = MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=cert, key_file=key)
        client = Client(broker.port, cfg, client_id or f"ghostpi-{cn or 'anon'}", will)
        clients.append(client)
        client.settled.wait(10)
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


def test_node_with_a_valid_certificate_works(connect: Callable[..., Client]) -> None:
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


def test_clients_without_a_trusted_certificate_are_refused(connect: Callable[..., Client], tmp_path: Path) -> None:
    anonymous = connect(None)
    rogue = connect("n1", ca=Authority(tmp_path / "rogue", cn="rogue CA"))
    assert not anonymous.connected.is_set()
    assert not rogue.connected.is_set()


def test_acl_confines_each_identity(connect: Callable[..., Client]) -> None:
    watcher = connect("viewer")
    operator, dashboard, homeassistant = connect("operator"), connect("dashboard"), connect("homeassistant")
    n1, n2 = connect("n1"), connect("n2")
    watcher.subscribe("ghostpi/#")
    watcher.subscribe("homeassistant/status")
    homeassistant.subscribe("homeassistant/#")
    n2.subscribe("ghostpi/n2/control")
    n2.subscribe("ghostpi/n2/ha/mode")
    n2.subscribe("ghostpi/all/ha/mode")  # no such fleet-wide topic: the ACL lets no node read it
    n1.subscribe("ghostpi/n2/#")  # eavesdropping: the broker delivers nothing
    forged = [
        (n1, "ghostpi/n2/predictions"),  # another node's telemetry
        (n1, "ghostpi/n2/status"),
        (n1, "ghostpi/n2/control"),  # commands: operators only
        (n1, "ghostpi/all/control"),
        (n1, "ghostpi/n1/control"),
        (n1, "homeassistant/device/ghostpi_n2/config"),  # another node's Home Assistant device
        (n1, "homeassistant/status"),
        (watcher, "ghostpi/n2/control"),  # viewers only read
        (operator, "ghostpi/n2/predictions"),
        # the tool identities may not publish as a node of their own name either
        (operator, "ghostpi/operator/heartbeat"),
        (dashboard, "ghostpi/dashboard/status"),
        (watcher, "ghostpi/viewer/predictions"),
        (homeassistant, "ghostpi/homeassistant/heartbeat"),
        (homeassistant, "homeassistant/device/ghostpi_homeassistant/config"),
        # Home Assistant changes modes, on a topic that carries nothing else; never a command, never fleet-wide
        (homeassistant, "ghostpi/n2/control"),
        (homeassistant, "ghostpi/all/control"),
        (homeassistant, "ghostpi/all/ha/mode"),
        (n1, "ghostpi/n2/ha/mode"),
        (n1, "ghostpi/n1/ha/mode"),
    ]
    answers = [(topic, client.publish(topic, b"forged")) for client, topic in forged]
    assert [(topic, answer) for topic, answer in answers if answer != DENIED] == []  # MQTT 5: the PUBACK says so
    allowed = [
        (n2, "ghostpi/n2/events"),
        (n2, "ghostpi/n2/snapshot"),
        (n2, "ghostpi/n2/detections"),
        (n2, "ghostpi/n2/detections/snapshot/cat-1796279628916"),
        (n2, "homeassistant/device/ghostpi_n2/config"),
        (operator, "ghostpi/n2/control"),
        (dashboard, "ghostpi/all/control"),
        (homeassistant, "ghostpi/n2/ha/mode"),  # the mode select
        (homeassistant, "homeassistant/status"),  # HA's birth message
    ]
    for client, topic in allowed:
        assert client.publish(topic, b"real") == OK, topic
    # The allowed messages were sent last; once they are in, the forged ones would have been too.
    assert watcher.got("homeassistant/status", b"real") and n2.got("ghostpi/n2/control")
    assert n2.got("ghostpi/n2/ha/mode", b"real")
    assert homeassistant.got("homeassistant/device/ghostpi_n2/config", b"real")
    seen = {t for t, p in watcher.messages + homeassistant.messages if p == b"real"}
    assert seen == {t for _, t in allowed}
    assert not [m for m in watcher.messages + homeassistant.messages + n2.messages if m[1] == b"forged"]
    assert n1.messages == []


def test_a_certificate_named_all_gets_nothing(connect: Callable[..., Client]) -> None:
    """ "all" addresses the fleet: a certificate with that name could otherwise read every fleet command."""
    fleet, operator = connect("all"), connect("operator")
    fleet.subscribe("ghostpi/all/control")
    assert fleet.publish("ghostpi/all/heartbeat", b"x") == DENIED
    assert fleet.publish("ghostpi/all/status", b"x") == DENIED
    operator.subscribe("ghostpi/#")
    assert operator.publish("ghostpi/all/control", b"fleet command") == OK
    assert operator.got("ghostpi/all/control", b"fleet command")  # delivered to readers, not to "all"
    assert fleet.messages == []


def test_a_stolen_node_key_cannot_take_over_another_nodes_session(
    connect: Callable[..., Client], broker: Mosquitto
) -> None:
    """node1's key, presenting node2's client id (as the node would, or bare), gets a session named node1."""
    viewer = connect("viewer")
    viewer.subscribe("ghostpi/+/status")
    n2 = connect("n2", client_id="ghostpi-n2", will=("ghostpi/n2/status", b"offline"))
    assert n2.connected.is_set()
    assert n2.publish("ghostpi/n2/status", b"online", retain=True) == OK
    thieves = [connect("n1", client_id=cid) for cid in ("ghostpi-n2", "n2", "ghostpi-n2")]
    assert all(t.connected.is_set() for t in thieves)
    # A takeover would have closed n2's socket before the thief's CONNACK; a PUBACK round trip afterwards
    # proves the same connection is still there.
    assert n2.publish("ghostpi/n2/heartbeat", b"still here") == OK
    assert n2.disconnects == []
    assert viewer.got("ghostpi/n2/status", b"online")
    assert b"offline" not in viewer.on("ghostpi/n2/status")  # no will fired: no fake offline/online flips
    assert thieves[0].publish("ghostpi/n2/status", b"offline") == DENIED
    log = broker.log_text()
    assert " as n1 (" in log and " as ghostpi-n2 (" not in log and " as n2 (" in log  # the id is the CN


def test_two_programs_sharing_a_certificate_push_each_other_off(
    connect: Callable[..., Client], broker: Mosquitto
) -> None:
    """The price of binding the client id to the certificate, and why every tool gets an identity of its own
    (docs/security.md): the broker drops the older connection."""
    first = connect("operator", client_id="ghostpi-ctl-1")
    second = connect("operator", client_id="ghostpi-ctl-2")
    assert second.connected.is_set()
    assert first._until(lambda: bool(first.disconnects), 10)
    assert "Client operator already connected, closing old connection." in broker.log_text()


def test_ctl_explains_a_session_takeover(broker: Mosquitto, pki: Authority) -> None:
    """``connected()`` says what to do when the broker drops a tool for another with its certificate (MQTT 5
    brokers that send "Session taken over" get a plainer message; mosquitto 2.0.11 just closes the socket)."""
    import asyncio

    from edge_node.errors import MqttError
    from edge_node.mqtt import connected

    cert, key = pki.issue("rollout")
    cfg = MqttConfig(host="localhost", port=broker.port, ca_file=pki.ca_file, cert_file=cert, key_file=key)

    async def main() -> None:
        async with connected(cfg, identifier="ghostpi-ctl-a") as client:
            await client.subscribe("ghostpi/+/events", qos=1)
            other = Client(broker.port, cfg, "ghostpi-ctl-b")
            try:
                assert other.connected.wait(10)
                async with asyncio.timeout(10):
                    async for _ in client.messages:
                        pass
            finally:
                other.close()

    with pytest.raises(MqttError, match="connected with the same certificate") as info:
        asyncio.run(main())
    assert "each program that runs at the same time needs its own identity (docs/security.md)" in str(info.value)


# --- the real node and tools, each with its own identity -----------------------------------------------


def _tls_env(broker: Mosquitto, pki: Authority, cn: str) -> dict[str, str]:
    cert, key = pki.issue(cn)
    return clean_env(
        EDGE_MQTT__HOST="localhost",
        EDGE_MQTT__PORT=str(broker.port),
        EDGE_MQTT__CA_FILE=str(pki.ca_file),
        EDGE_MQTT__CERT_FILE=str(cert),
        EDGE_MQTT__KEY_FILE=str(key),
    )


def _tls_node(broker: Mosquitto, pki: Authority, bundle: Path, tmp_path: Path, *args: str) -> NodeProcess:
    """A real node ``cam-1`` with Home Assistant discovery, its own certificate and the shipped ACL."""
    node_env = _tls_env(broker, pki, "cam-1") | {
        "EDGE_NODE_ID": "cam-1",
        "EDGE_CAMERA__SOURCE": "synthetic",
        "EDGE_MODEL__BUNDLE": str(bundle),
        "EDGE_MODEL__THREADS": "1",
        "EDGE_HEARTBEAT__INTERVAL": "1",
        "EDGE_STATE_DIR": str(tmp_path / "state"),
        "EDGE_HA__ENABLED": "true",
    }
    node_settings = {k: v for k, v in node_env.items() if k.startswith("EDGE_")}
    return NodeProcess(node_settings, tmp_path / "node", args=list(args)).start()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_node_ctl_monitor_rollout_and_home_assistant_work_side_by_side(
    connect: Callable[..., Client], broker: Mosquitto, pki: Authority, tiny_bundle: Path, tmp_path: Path
) -> None:
    """The shipped broker config with a real node and every tool connected at once, as in a real fleet."""
    dashboard, homeassistant = connect("dashboard"), connect("homeassistant")
    dashboard.subscribe("ghostpi/#")
    homeassistant.subscribe("homeassistant/#")
    # --echo would be a second connection with the node's certificate: the node must turn it off.
    node = _tls_node(broker, pki, tiny_bundle, tmp_path, "--echo")
    try:
        assert dashboard.got("ghostpi/cam-1/status", b"online", timeout=60), node.log()[-3000:]
        # Home Assistant: discovery arrives, and its mode select's command is obeyed.
        topic = "homeassistant/device/ghostpi_cam-1/config"
        assert homeassistant.got(topic, timeout=30), node.log()[-3000:]
        select = json.loads(homeassistant.on(topic)[0])["cmps"]["mode"]
        assert homeassistant.publish(*select_command(select, "balanced")) == OK

        def mode_is_balanced() -> bool:
            return any(json.loads(p).get("mode") == "balanced" for p in dashboard.on("ghostpi/cam-1/state"))

        assert dashboard._until(mode_is_balanced, 30), node.log()[-3000:]

        # A person's ctl, a rollout's ctl and a monitor, all at the same time.
        def tool(cn: str, *args: str) -> subprocess.Popen[str]:
            cmd = [sys.executable, "-m", "edge_node", *args]
            return subprocess.Popen(
                cmd, env=_tls_env(broker, pki, cn), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip

        tools = {
            "operator": tool("operator", "ctl", "cam-1", "ping", "--timeout", "60"),
            "rollout": tool("rollout", "ctl", "all", "ping", "--timeout", "60"),
            "viewer": tool("viewer", "monitor", "--once", "--json", "--timeout", "20"),
        }
        results = {cn: (p.wait(120), *p.communicate()) for cn, p in tools.items()}
        for cn, (code, out, err) in results.items():
            assert code == 0, f"{cn}: exit {code}\n{out}\n{err}"
        assert results["operator"][1].startswith("cam-1: ok ping")
        assert results["rollout"][1].startswith("cam-1: ok ping")
        snapshot = json.loads(results["viewer"][1])
        assert [(n["node"], n["status"]) for n in snapshot["nodes"]] == [("cam-1", "online")]
        # Nobody was pushed off: the node connected once and never went offline, the watchers stayed.
        assert node.alive(), node.log()[-3000:]
        assert "--echo is off" in node.log()
        assert dashboard.on("ghostpi/cam-1/status") == [b"online"]  # a reconnect would have said online again
        assert dashboard.disconnects == [] and homeassistant.disconnects == []
    finally:
        node.terminate()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_stolen_node_key_cannot_command_the_fleet_through_home_assistant(
    connect: Callable[..., Client], broker: Mosquitto, pki: Authority, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Issue 16, item 1. A node writes its own discovery message, so a stolen one (n1) can point its select's
    command topic anywhere and template any payload; Home Assistant renders and sends what discovery says, with
    its own identity. That identity may write only the nodes' ``ha/mode`` topics (never ``all``, never a
    control topic), and a node takes nothing but a mode name there."""
    homeassistant, viewer, bystander = connect("homeassistant"), connect("viewer"), connect("n2")
    homeassistant.subscribe("homeassistant/#")
    viewer.subscribe("ghostpi/#")
    for topic in ("ghostpi/n2/control", "ghostpi/all/control", "ghostpi/n2/ha/mode"):
        bystander.subscribe(topic)  # another node, as a node subscribes
    node = _tls_node(broker, pki, tiny_bundle, tmp_path)
    real = "homeassistant/device/ghostpi_cam-1/config"
    try:
        assert viewer.got("ghostpi/cam-1/status", b"online", timeout=60), node.log()[-3000:]
        assert homeassistant.got(real, timeout=30), node.log()[-3000:]

        def events() -> list[dict[str, Any]]:
            """cam-1's answers to commands (not its own node events, such as a camera's)."""
            answers = [json.loads(p) for p in viewer.on("ghostpi/cam-1/events")]
            return [e for e in answers if e["cmd"] in ("set_mode", "rollback", "invalid")]

        thief = connect("n1")
        stolen_topic, payload = discovery_message("ghostpi", "n1", sw_version="0", model_name="stolen")
        stolen = json.loads(payload)

        def click(cmd_t: str, cmd_tpl: str | None, option: str = "high") -> str:
            """The thief republishes its discovery; HA picks it up and a user (or automation) picks ``option``."""
            select = stolen["cmps"]["mode"]
            select.pop("cmd_tpl", None)
            select.update({"cmd_t": cmd_t} | ({} if cmd_tpl is None else {"cmd_tpl": cmd_tpl}))
            forged = json.dumps(stolen).encode()
            assert thief.publish(stolen_topic, forged, retain=True) == OK  # its own discovery topic: allowed
            assert homeassistant.got(stolen_topic, forged)
            seen = json.loads(homeassistant.on(stolen_topic)[-1])["cmps"]["mode"]
            return homeassistant.publish(*select_command(seen, option))

        rollback = '{"cmd": "rollback"}'
        targets = ["ghostpi/all/control", "ghostpi/cam-1/control", "ghostpi/n2/control", "ghostpi/all/ha/mode"]
        answers = {target: click(target, rollback) for target in targets}
        # The legit select after the attempts: once its set_mode is answered, the node has seen all that came first.
        mine = json.loads(homeassistant.on(real)[0])["cmps"]["mode"]
        assert homeassistant.publish(*select_command(mine, "balanced")) == OK
        assert viewer._until(lambda: any(e["cmd"] == "set_mode" for e in events()), 30), node.log()[-3000:]
        assert bystander.messages == []  # no node received any of it ...
        assert [e for e in events() if e["cmd"] != "set_mode"] == []  # ... nor ran it
        assert answers == dict.fromkeys(targets, DENIED)  # the broker refused Home Assistant every one
        assert [e["detail"] for e in events()] == [{"mode": "balanced", "resolution": 192}]

        # What stays possible: HA may write any node's mode topic. A command there is refused with an event ...
        assert click("ghostpi/cam-1/ha/mode", rollback) == OK
        assert viewer._until(lambda: len(events()) == 2, 30), node.log()[-3000:]
        refused = events()[1]
        assert refused["cmd"] == "rollback" and not refused["ok"] and "only a mode name" in refused["error"]
        # ... but a mode is a mode: the thief's select can change cam-1's mode, and that is all it can do.
        assert click("ghostpi/cam-1/ha/mode", None, "performance") == OK
        assert viewer._until(lambda: len(events()) == 3, 30), node.log()[-3000:]
        assert events()[2]["ok"] and events()[2]["detail"] == {"mode": "performance", "resolution": 160}
        assert bystander.messages == [] and node.alive()
    finally:
        node.terminate()
