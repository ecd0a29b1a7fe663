"""The node as a real process against a real mosquitto: the MQTT contract end to end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_node.messages import Event, Heartbeat, NodeState, Prediction
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector, NodeProcess, Received

pytestmark = pytest.mark.slow

T = "ghostpi/node-t"


@pytest.fixture
def node(node_env: dict[str, str], tmp_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(node_env, tmp_path / "node").start()
    try:
        yield proc
    finally:
        if proc.alive():
            proc.terminate()


def _prediction(
    bus: Collector, node: NodeProcess, pred: Callable[[Prediction], bool] = lambda p: True, since: float = 0.0
) -> Prediction:
    try:
        m = bus.wait(f"{T}/predictions", lambda m: pred(Prediction.model_validate_json(m.payload)), since=since)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{node.log()[-3000:]}") from None
    return Prediction.model_validate_json(m.payload)


def test_publishes_wellformed_predictions_status_state_and_heartbeat(node: NodeProcess, bus: Collector) -> None:
    p = _prediction(bus, node)
    assert p.node == "node-t" and p.resolution == 224 and p.mode == "high"
    assert p.model.name == "tiny" and p.model.precision == "int8"
    assert p.label == p.top_k[0].label and 0 < p.confidence <= 1
    assert len(p.top_k) == 5 and p.top_k == sorted(p.top_k, key=lambda s: -s.confidence)
    assert p.latency_ms.total >= p.latency_ms.inference > 0
    assert bus.wait(f"{T}/status").payload == b"online"
    state = NodeState.model_validate_json(bus.wait(f"{T}/state").payload)
    assert state.resolution == 224 and state.publish == "every"
    hb = Heartbeat.model_validate_json(bus.wait(f"{T}/heartbeat", lambda m: json.loads(m.payload)["fps"] > 0).payload)
    assert hb.camera == "ok" and hb.frames_processed > 0 and hb.rss_mb > 0
    seqs = [Prediction.model_validate_json(m.payload).seq for m in bus.on(f"{T}/predictions")]
    assert seqs == sorted(seqs)


def test_set_mode_changes_resolution_and_is_acknowledged(node: NodeProcess, bus: Collector) -> None:
    _prediction(bus, node)
    bus.publish(f"{T}/control", json.dumps({"id": "m1", "cmd": "set_mode", "mode": "performance"}))
    ack = Event.model_validate_json(bus.wait(f"{T}/events", lambda m: json.loads(m.payload).get("id") == "m1").payload)
    assert ack.ok and ack.cmd == "set_mode"
    _prediction(bus, node, lambda p: p.resolution == 160 and p.mode == "performance", since=time.monotonic())
    # Fleet-wide commands reach the node too.
    bus.publish("ghostpi/all/control", json.dumps({"id": "m2", "cmd": "set_mode", "mode": "balanced"}))
    bus.wait(f"{T}/events", lambda m: json.loads(m.payload).get("id") == "m2")
    _prediction(bus, node, lambda p: p.resolution == 192, since=time.monotonic())
    state = NodeState.model_validate_json(
        bus.wait(f"{T}/state", lambda m: json.loads(m.payload)["resolution"] == 192).payload
    )
    assert state.mode == "balanced"


def _refused_with(needle: str) -> Callable[[Received], bool]:
    return lambda m: not json.loads(m.payload)["ok"] and needle in json.loads(m.payload)["error"]


def test_garbage_on_control_gets_error_events_and_predictions_continue(node: NodeProcess, bus: Collector) -> None:
    _prediction(bus, node)
    bad = [
        (b"{not json", "invalid JSON"),
        (json.dumps({"id": "u", "cmd": "reboot"}).encode(), "unknown command"),
        (json.dumps({"id": "w", "cmd": "set_mode", "mode": 7}).encode(), "mode"),
        (b"{" + b" " * 20000 + b"}", "exceeds"),
    ]
    start = time.monotonic()
    for payload, _ in bad:
        bus.publish(f"{T}/control", payload)
    for _, needle in bad:
        bus.wait(f"{T}/events", _refused_with(needle), since=start)
    errors = [json.loads(m.payload) for m in bus.on(f"{T}/events", since=start)]
    assert {e.get("id") for e in errors} >= {"u", "w"}
    after = time.monotonic()
    _prediction(bus, node, since=after)
    assert node.alive()


def test_a_crash_closes_the_connection_so_the_broker_publishes_the_will_at_once(
    node: NodeProcess, bus: Collector
) -> None:
    """kill -9 is a process crash: the kernel closes the socket, so the broker sees the connection end and sends
    the will without waiting for the keepalive (5 s). A silent network loss, where only the keepalive can tell,
    is tests/node/test_node_partition.py."""
    _prediction(bus, node)
    assert bus.wait(f"{T}/status").payload == b"online"
    start = time.monotonic()
    node.kill9()
    m = bus.wait(f"{T}/status", lambda m: m.payload == b"offline", since=start, timeout=15)
    assert m.at - start < int(node.env["EDGE_MQTT__KEEPALIVE"])  # before the keepalive could have run out


def test_sigterm_publishes_offline_and_exits_cleanly(node: NodeProcess, bus: Collector) -> None:
    _prediction(bus, node)
    start = time.monotonic()
    assert node.terminate() == 0
    m = bus.wait(f"{T}/status", lambda m: m.payload == b"offline", since=start, timeout=5)
    assert m.at - start < 5


@pytest.mark.parametrize("run", range(3))
def test_sigterm_under_full_load_exits_promptly(node_env: dict[str, str], tmp_path: Path, run: int) -> None:
    """A camera faster than the model keeps every stage busy; shutdown must still finish (it once hung when
    a cancelled publish swallowed its cancellation)."""
    del run
    env = dict(node_env, EDGE_CAMERA__SOURCE="synthetic:on_demand")
    proc = NodeProcess(env, tmp_path / "busy").start()
    bus = Collector(int(env["EDGE_MQTT__PORT"]))
    try:
        _prediction(bus, proc)
        time.sleep(1.0)
        assert proc.terminate(timeout=10) == 0
    finally:
        bus.close()


def test_broker_restart_is_survived(node: NodeProcess, mosquitto: Mosquitto, tmp_path: Path) -> None:
    bus = Collector(mosquitto.port)
    _prediction(bus, node)
    bus.close()
    mosquitto.restart(downtime=2.0)
    bus = Collector(mosquitto.port)
    try:
        restarted = time.monotonic()
        _prediction(bus, node, since=restarted)
        assert bus.wait(f"{T}/status").payload == b"online"  # retained status re-published after reconnect
        bus.wait(f"{T}/state")  # and the retained state (the broker kept nothing: persistence is off)
        hb = Heartbeat.model_validate_json(bus.wait(f"{T}/heartbeat", since=restarted).payload)
        assert hb.reconnects >= 1
    finally:
        bus.close()
