"""A real network partition: the node runs in a network namespace of its own, and its link is cut silently.

This is not a kill -9 (tests/node/test_node_process.py): a killed process's kernel closes its socket, so the broker
sees the connection end and publishes the will at once. Here no packet crosses the cut and nothing is closed,
as with a pulled cable, a dead Wi-Fi link or a power cut on the node's side: only MQTT's keepalive can tell.
The broker must publish the node's will after its keepalive, not before; once the link is back, the node must
reconnect by itself, say ``online`` again and report the gap in its heartbeat.

Needs root (a network namespace and a veth pair, tests/support/partition.py); skips with the reason elsewhere, and
fails under CI=true like any skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_node.messages import Heartbeat
from tests.support.brokers import Mosquitto, free_port
from tests.support.nodeproc import Collector, NodeProcess, Received
from tests.support.partition import NetnsUnavailable, Partition, partition

pytestmark = pytest.mark.slow

T = "ghostpi/node-t"
KEEPALIVE = 5  # seconds: the smallest EDGE_MQTT__KEEPALIVE allows
# mosquitto 2.0 looks for clients past 1.5 x keepalive only every 6 s, on a clock of whole seconds
# (src/keepalive.c: `if(last_keepalive_check + 5 < db.now_s)`), so the will comes up to 7 s after 1.5 x keepalive.
MOSQUITTO_SWEEP = 6 + 1


@dataclass(frozen=True)
class Site:
    """A partitionable link, and a mosquitto on loopback (for the test's subscriber) and on the host end of the
    link (for the node)."""

    link: Partition
    broker: Mosquitto
    node_port: int  # the broker's listener on link.host_ip


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with ExitStack() as stack:
        try:
            link = stack.enter_context(partition())
        except NetnsUnavailable as exc:
            pytest.skip(f"this test needs a network namespace of its own (root and iproute2): {exc}")
        node_port = free_port()
        broker = Mosquitto(
            tmp_path / "mosquitto", extra_conf=f"allow_anonymous true\nlistener {node_port} {link.host_ip}\n"
        )
        stack.callback(broker.stop)
        yield Site(link, broker.start(), node_port)


def _heartbeat(bus: Collector, node: NodeProcess, since: float) -> Heartbeat:
    try:
        return Heartbeat.model_validate_json(bus.wait(f"{T}/heartbeat", since=since, timeout=30).payload)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{node.log()[-4000:]}") from None


def _status(bus: Collector, value: bytes, since: float, timeout: float = 60.0) -> Received:
    return bus.wait(f"{T}/status", lambda m: m.payload == value, since=since, timeout=timeout)


def _wait_for_log(node: NodeProcess, text: str, timeout: float) -> float:
    """Wait until the node's log says ``text``; return when it was first seen."""
    deadline = time.monotonic() + timeout
    while text not in node.log():
        assert time.monotonic() < deadline, f"the node never logged {text!r}\n{node.log()[-4000:]}"
        time.sleep(0.1)
    return time.monotonic()


def test_a_silent_partition_fires_the_will_after_keepalive_and_the_node_comes_back_reporting_the_gap(
    site: Site, node_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(
        node_env,
        EDGE_MQTT__HOST=site.link.host_ip,
        EDGE_MQTT__PORT=str(site.node_port),
        EDGE_MQTT__KEEPALIVE=str(KEEPALIVE),
    )
    bus = Collector(site.broker.port)  # on loopback: the cut does not touch it
    node = NodeProcess(env, tmp_path / "node", prefix=site.link.run_inside).start()
    try:
        _status(bus, b"online", since=0.0)
        _heartbeat(bus, node, since=time.monotonic())
        last_seen = bus.wait(f"{T}/predictions", since=time.monotonic(), timeout=30).at

        site.link.cut()
        cut_at = time.monotonic()
        will = _status(bus, b"offline", since=cut_at, timeout=1.5 * KEEPALIVE + MOSQUITTO_SWEEP + 10)
        silent = will.at - max(m.at for m in bus.messages if m.topic.startswith(T) and m.at < will.at)
        # Not at once, as when a socket is closed: only after the keepalive ran out with no packet from the node.
        assert KEEPALIVE < will.at - cut_at <= 1.5 * KEEPALIVE + MOSQUITTO_SWEEP, (will.at - cut_at, silent)
        assert "Client ghostpi-node-t has exceeded timeout" in site.broker.log_text()  # mosquitto says why
        assert last_seen < cut_at

        # The node notices too (no PINGRESP within keepalive), and cannot reconnect while the link is down.
        noticed = _wait_for_log(node, "MQTT connection lost", timeout=2 * KEEPALIVE + 10)
        time.sleep(1.0)
        site.link.heal()
        healed = time.monotonic()

        back = _status(bus, b"online", since=healed)
        hb = _heartbeat(bus, node, since=back.at)
        assert hb.reconnects == 1, hb
        assert hb.dropped_offline.get("predictions", 0) > 0, hb  # what was not sent while it knew it was cut off
        # the gap as the node saw it: from noticing the loss (before `noticed`) to reconnecting (before `back`)
        assert healed - noticed - 0.2 <= hb.offline_s <= back.at - cut_at + 0.2, (hb.offline_s, healed - noticed)
        assert "back online after" in node.log()
        print(  # the figures, for -rP
            f"will {will.at - cut_at:.1f} s after the cut (keepalive {KEEPALIVE} s); the node noticed after "
            f"{noticed - cut_at:.1f} s, was online {back.at - healed:.1f} s after the link returned; "
            f"heartbeat: offline_s {hb.offline_s}, dropped {hb.dropped_offline}, reconnects {hb.reconnects}"
        )
    finally:
        bus.close()
        node.terminate()
