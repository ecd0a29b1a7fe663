"""The broker identities agree everywhere they are written down, and the mosquitto role's ACL works.

The node's settings (edge_node/wire/identities.py), the Ansible fleet lists (group_vars/all.yml), broker.yml, both
roles and the shipped ACL name the same identities; the role renders deploy/mosquitto/ghostpi.acl exactly;
and an ACL the role renders for a bigger team (a second operator and viewer) works on a real mosquitto, as does
the recorder's identity: ``edge-node record`` records the fleet with it, and it can publish nothing but its heartbeat.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from edge_node.config import MqttConfig
from edge_node.fleet.simnode import SimNode
from edge_node.record.rows import LEAVES
from edge_node.wire import Topics, identities
from tests.support.brokers import Mosquitto, tls_broker
from tests.support.paths import REPO
from tests.support.pki import Authority
from tests.support.record_procs import RecorderProcess, sqlite_rows, wait_until
from tests.support.tlsclient import DENIED, OK, Client

ANSIBLE = REPO / "deploy" / "ansible"
ROLE = ANSIBLE / "roles" / "mosquitto"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def _yaml(path: Path) -> dict[str, Any]:  # YAML is untyped: the assertions below check the shapes
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _acl_users(text: str) -> list[str]:
    return re.findall(r"^user (\S+)$", text, flags=re.MULTILINE)


def test_identity_lists_agree() -> None:
    fleet = _yaml(ANSIBLE / "group_vars" / "all.yml")
    broker_defaults = _yaml(ROLE / "defaults" / "main.yml")
    node_defaults = _yaml(ANSIBLE / "roles" / "edge_node" / "defaults" / "main.yml")
    [pki_play, _] = yaml.safe_load((ANSIBLE / "broker.yml").read_text())
    assert (
        fleet["ghostpi_operator_identities"]
        == broker_defaults["mosquitto_operator_identities"]
        == [*identities.OPERATORS]
    )
    assert fleet["ghostpi_viewer_identities"] == broker_defaults["mosquitto_viewer_identities"] == [*identities.VIEWERS]
    assert (
        fleet["ghostpi_homeassistant_identities"]
        == broker_defaults["mosquitto_homeassistant_identities"]
        == [*identities.HOME_ASSISTANT]
    )
    assert (
        fleet["ghostpi_recorder_identities"]
        == broker_defaults["mosquitto_recorder_identities"]
        == _yaml(ANSIBLE / "roles" / "nats" / "defaults" / "main.yml")["nats_recorder_identities"]
        == [*identities.RECORDERS]
    )
    assert broker_defaults["mosquitto_recorder_leaves"] == [*LEAVES]  # what the recorder subscribes to
    assert fleet["ghostpi_rollout_identity"] in identities.OPERATORS
    builtin = set(identities.RESERVED_NODE_IDS)
    assert set(node_defaults["edge_node_builtin_reserved_ids"]) == builtin
    assert set(pki_play["vars"]["builtin_reserved_ids"]) == builtin
    acl = (REPO / "deploy" / "mosquitto" / "ghostpi.acl").read_text()
    assert set(_acl_users(acl)) == builtin


def test_the_shipped_acl_is_what_the_role_renders_with_the_default_identities() -> None:
    """Rendered the way Ansible's template module does (trim_blocks), from the role's own defaults."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = env.from_string((ROLE / "templates" / "ghostpi.acl.j2").read_text())
    defaults = {k: v for k, v in _yaml(ROLE / "defaults" / "main.yml").items() if "{{" not in str(v)}
    assert template.render(**defaults) == (REPO / "deploy" / "mosquitto" / "ghostpi.acl").read_text()


# --- the role for real, for a team with a second operator and a second viewer ----------------------------


@pytest.fixture(scope="module")
def team_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Authority]]:
    """The mosquitto role run (packages and service off) into a temp root with extra identities, then a
    mosquitto started on the files it installed."""
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    tmp = tmp_path_factory.mktemp("team")
    pki = Authority(tmp / "pki")
    pki.issue("localhost", server=True)
    (tmp / "pki" / "server.crt").write_bytes((tmp / "pki" / "localhost.crt").read_bytes())
    (tmp / "pki" / "server.key").write_bytes((tmp / "pki" / "localhost.key").read_bytes())
    group = grp.getgrgid(os.getgid()).gr_name
    extra = {
        "ansible_python_interpreter": sys.executable,
        "mosquitto_root": str(tmp / "root"),
        "mosquitto_manage_packages": False,
        "mosquitto_manage_service": False,
        "mosquitto_pki_dir": str(tmp / "pki"),
        "mosquitto_owner": pwd.getpwuid(os.getuid()).pw_name,
        "mosquitto_owner_group": group,
        "mosquitto_group": group,
        "mosquitto_operator_identities": [*identities.OPERATORS, "operator-alice"],
        "mosquitto_viewer_identities": [*identities.VIEWERS, "viewer-alice"],
    }
    (tmp / "vars.json").write_text(json.dumps(extra))
    (tmp / "play.yml").write_text("- hosts: localhost\n  gather_facts: false\n  roles: [mosquitto]\n")
    (tmp / "root" / "etc" / "mosquitto" / "conf.d").mkdir(parents=True)
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_HOME": str(tmp / "ansible-home"),
           "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    cmd = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e", f"@{tmp / 'vars.json'}", str(tmp / "play.yml")]
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    etc = tmp / "root" / "etc" / "mosquitto"
    assert (etc / "conf.d" / "ghostpi.conf").read_text() == (
        REPO / "deploy" / "mosquitto" / "mosquitto.conf"
    ).read_text()
    assert _acl_users((etc / "ghostpi.acl").read_text())[-5:] == [
        "operator-alice",
        "viewer",
        "viewer-alice",
        "homeassistant",
        "recorder",
    ]
    broker = tls_broker(tmp / "mosquitto", etc / "conf.d" / "ghostpi.conf", etc / "ghostpi.acl", pki).start()
    try:
        yield broker, pki
    finally:
        broker.stop()


@pytest.fixture
def team(team_broker: tuple[Mosquitto, Authority]) -> Iterator[Callable[[str], Client]]:
    broker, pki = team_broker
    clients: list[Client] = []

    def connect(cn: str) -> Client:
        cert, key = pki.issue(cn)
        client = Client(broker.port, MqttConfig(ca_file=pki.ca_file, cert_file=cert, key_file=key), f"ghostpi-{cn}")
        clients.append(client)
        assert client.connected.wait(10), client.refused
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_person_gets_identities_of_their_own(team: Callable[[str], Client]) -> None:
    # Everyone at once: two people, each with ctl (operator) and monitor (viewer), and a node.
    node = team("cam-1")
    operator, alice = team("operator"), team("operator-alice")
    viewer, alice_viewer = team("viewer"), team("viewer-alice")
    node.subscribe("ghostpi/cam-1/control")
    viewer.subscribe("ghostpi/#")
    alice_viewer.subscribe("ghostpi/#")
    assert alice.publish("ghostpi/cam-1/control", b"from alice") == OK
    assert operator.publish("ghostpi/cam-1/control", b"from operator") == OK
    assert alice_viewer.publish("ghostpi/cam-1/control", b"viewer") == DENIED
    assert alice.publish("ghostpi/operator-alice/heartbeat", b"fake node") == DENIED
    assert alice_viewer.publish("ghostpi/viewer-alice/status", b"fake node") == DENIED
    assert node.publish("ghostpi/cam-1/heartbeat", b"hb") == OK
    assert node.got("ghostpi/cam-1/control", b"from operator")
    assert node.on("ghostpi/cam-1/control") == [b"from alice", b"from operator"]
    assert viewer.got("ghostpi/cam-1/heartbeat", b"hb") and alice_viewer.got("ghostpi/cam-1/heartbeat", b"hb")
    for client in (node, operator, alice, viewer, alice_viewer):
        assert client.disconnects == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_recorder_identity_records_the_fleet_and_publishes_only_its_heartbeat(
    team_broker: tuple[Mosquitto, Authority], team: Callable[[str], Client], tmp_path: Path
) -> None:
    """``edge-node record`` with the recorder's certificate (``$share/record/ghostpi/+/<leaf>``, which
    mosquitto checks against ``topic read ghostpi/+/<leaf>``) records a node; the same key by hand can neither
    publish as a node nor command one, nor read a command."""
    broker, pki = team_broker
    cert, key = pki.issue("recorder")
    node, viewer, operator = team("cam-1"), team("viewer"), team("operator")
    viewer.subscribe("ghostpi/#")
    node.subscribe("ghostpi/cam-1/control")
    tls = {"EDGE_MQTT__CA_FILE": str(pki.ca_file), "EDGE_MQTT__CERT_FILE": str(cert), "EDGE_MQTT__KEY_FILE": str(key)}
    settings = {"EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(broker.port), **tls}
    rec = RecorderProcess(tmp_path / "rec", "recorder", settings)
    db = tmp_path / "rec" / "state" / "history.db"
    sim = SimNode("cam-1", rng=random.Random(1))
    try:
        rec.start()
        beat = Topics.recorder_heartbeat("ghostpi", "recorder")
        wait_until(lambda: viewer.on(beat), 60, "the recorder's heartbeat", rec)
        for _ in range(5):
            assert node.publish("ghostpi/cam-1/predictions", sim.prediction()) == OK
        event = {"id": "e1", "cmd": "ping", "ok": True, "ts": time.time()}
        assert node.publish("ghostpi/cam-1/events", json.dumps(event).encode()) == OK
        wait_until(lambda: sqlite_rows(db, "predictions") == 5 and sqlite_rows(db, "events") == 1, 60, "the rows", rec)
    finally:
        rec.stop()
    recorder = team("recorder")  # the recorder has left: one identity, one connection
    recorder.subscribe("ghostpi/+/control")  # mosquitto grants the subscription; its ACL delivers nothing
    recorder.subscribe("ghostpi/all/control")
    recorder.subscribe("$share/record/ghostpi/+/state")
    assert recorder.publish("ghostpi/cam-1/predictions", b"forged") == DENIED
    assert recorder.publish("ghostpi/cam-1/control", b'{"cmd":"ping"}') == DENIED
    assert recorder.publish("ghostpi/all/control", b'{"cmd":"ping"}') == DENIED
    assert recorder.publish("ghostpi/recorder/heartbeat", b"as a node") == DENIED
    assert recorder.publish(Topics.recorder_heartbeat("ghostpi", "other"), b"as another recorder") == DENIED
    assert recorder.publish(Topics.recorder_heartbeat("ghostpi", "recorder"), b"mine") == OK
    assert operator.publish("ghostpi/cam-1/control", b"for cam-1") == OK
    assert operator.publish("ghostpi/all/control", b"for all") == OK
    assert node.publish("ghostpi/cam-1/state", b'{"mode":"high"}') == OK
    assert recorder.got("ghostpi/cam-1/state", b'{"mode":"high"}')  # after the commands: they were not sent
    assert recorder.on("ghostpi/cam-1/control") == [] and recorder.on("ghostpi/all/control") == []
    assert node.got("ghostpi/cam-1/control", b"for cam-1")  # they were sent
    assert viewer.got(Topics.recorder_heartbeat("ghostpi", "recorder"), b"mine")
    topics = {t for t, _ in viewer.messages}
    assert Topics.recorder_heartbeat("ghostpi", "other") not in topics and "ghostpi/recorder/heartbeat" not in topics
    assert b"forged" not in viewer.on("ghostpi/cam-1/predictions")


def test_the_threat_model_names_only_tests_that_exist() -> None:
    """docs/security.md cites a test for each claim; a renamed or deleted test must not leave a dead citation."""
    doc = (REPO / "docs" / "security.md").read_text()
    cited = set(re.findall(r"\b(test_\w+)", doc)) - {"test_x"}
    defined = {
        name
        for path in (REPO / "tests").rglob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.MULTILINE)
    }
    files = {p.stem for p in (REPO / "tests").rglob("test_*.py")}
    assert cited, "docs/security.md cites no test"
    assert cited - defined - files == set()
