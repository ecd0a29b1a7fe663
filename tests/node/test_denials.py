"""A node whose credentials the broker's ACL does not match used to log "connected" while every publish was
dropped. With MQTT 5 the broker says so in its PUBACK/SUBACK reason codes: the node logs it, counts it in its
heartbeat, and the monitor shows it. MQTT 3.1.1 has no such codes (documented in docs/security.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.messages import Heartbeat
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector, NodeProcess
from tests.support.paths import REPO

pytestmark = pytest.mark.slow

ACL = """\
user node1
topic write ghostpi/node1/#
topic read ghostpi/node1/control
topic read ghostpi/all/control
# only so that this test can read the wrong node's heartbeat:
topic write ghostpi/node2/heartbeat

user watcher
topic read ghostpi/#
"""


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    work = tmp_path / "broker"
    work.mkdir()
    passwords = work / "passwd"
    passwords.touch()
    for user in ("node1", "watcher"):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, f"{user}-secret"], check=True)
    (work / "acl").write_text(ACL)
    broker = Mosquitto(work, extra_conf=f"allow_anonymous false\npassword_file {passwords}\nacl_file {work / 'acl'}\n")
    try:
        yield broker.start()
    finally:
        broker.stop()


def _watcher(port: int) -> Collector:
    return Collector(port, ("ghostpi/#",), username="watcher", password="watcher-secret")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_node_with_the_wrong_credentials_says_the_broker_refuses_it(
    acl_broker: Mosquitto, tiny_bundle: Path, tmp_path: Path, protocol: str
) -> None:
    env = {
        "EDGE_NODE_ID": "node2",  # but the credentials are node1's
        "EDGE_MQTT__HOST": "127.0.0.1",
        "EDGE_MQTT__PORT": str(acl_broker.port),
        "EDGE_MQTT__USERNAME": "node1",
        "EDGE_MQTT__PASSWORD": "node1-secret",
        "EDGE_MQTT__PROTOCOL": protocol,
        "EDGE_CAMERA__SOURCE": "synthetic",
        "EDGE_MODEL__BUNDLE": str(tiny_bundle),
        "EDGE_MODEL__THREADS": "1",
        "EDGE_HEARTBEAT__INTERVAL": "1",
        "EDGE_STATE_DIR": str(tmp_path / "state"),
    }
    bus = _watcher(acl_broker.port)
    node = NodeProcess(env, tmp_path / "node").start()
    try:
        if protocol == "5":
            m = bus.wait("ghostpi/node2/heartbeat", lambda m: json.loads(m.payload).get("publish_denied", 0) > 0)
            hb = Heartbeat.model_validate_json(m.payload)
            assert hb.publish_denied >= 3  # status, the control subscriptions, state...
            log = node.log()
            assert "refused" in log and "ghostpi/node2/status" in log and "check that this node's" in log, log[-3000:]
            monitor = subprocess.run(
                [sys.executable, "-m", "edge_node", "monitor", "--once", "--json", "--timeout", "3"],
                env={
                    "PATH": "/usr/bin:/bin",
                    "PYTHONPATH": str(REPO),
                    "EDGE_MQTT__HOST": "127.0.0.1",
                    "EDGE_MQTT__PORT": str(acl_broker.port),
                    "EDGE_MQTT__USERNAME": "watcher",
                    "EDGE_MQTT__PASSWORD": "watcher-secret",
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            rows = {r["node"]: r for r in json.loads(monitor.stdout)["nodes"]}
            assert rows["node2"]["denied"] > 0, monitor.stdout
        else:
            m = bus.wait("ghostpi/node2/heartbeat", lambda m: json.loads(m.payload)["frames_processed"] > 0)
            assert json.loads(m.payload).get("publish_denied", 0) == 0  # MQTT 3.1.1 cannot tell
        assert not bus.on("ghostpi/node2/status")  # the ACL did hold: nothing else got through
    finally:
        bus.close()
        node.terminate()
