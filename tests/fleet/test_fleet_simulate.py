"""Simulated nodes answer control commands like real ones, and the CLI wires monitor/simulate/ctl."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from edge_node.cli import _parser
from edge_node.config import MqttConfig
from edge_node.errors import MqttError
from edge_node.fleet.simulate import SimOptions, SimStats, SimulatedFleet, node_ids
from edge_node.mqtt import connected
from edge_node.wire import Event, NodeState, Prediction
from tests.support.brokers import Mosquitto, free_port
from tests.support.fleet_procs import Simulator
from tests.support.nodeproc import Collector


def test_node_ids_sort_naturally() -> None:
    assert node_ids(3, "n-") == ["n-001", "n-002", "n-003"]
    assert node_ids(1200, "x")[-1] == "x1200"


def test_cli_registers_fleet_commands() -> None:
    parser = _parser()
    args = parser.parse_args(["monitor", "--once", "--json", "--timeout", "2"])
    assert args.once and args.json and args.timeout == 2.0
    args = parser.parse_args(["simulate", "--nodes", "5", "--kill", "1", "--kill-after", "3"])
    assert args.nodes == 5 and args.kill == 1 and args.kill_after == 3.0
    assert parser.parse_args(["ctl", "all", "ping"]).target == "all"


@pytest.mark.timeout(60)
def test_simulated_nodes_answer_commands(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=mosquitto.port)

    async def scenario() -> None:
        fleet = SimulatedFleet(cfg, SimOptions(nodes=3, rate=20, heartbeat=1, seed=1, id_prefix="t-"))
        runner = asyncio.create_task(fleet.run())
        async with connected(cfg, identifier="test-operator") as op:
            await op.subscribe("ghostpi/+/events", qos=1)
            await op.subscribe("ghostpi/t-002/predictions")
            await op.subscribe("ghostpi/t-002/state", qos=1)
            await asyncio.sleep(0.5)  # let the fleet come up
            await op.publish("ghostpi/t-002/control", b'{"cmd": "set_mode", "mode": "performance", "id": "m1"}', 1)
            await op.publish("ghostpi/all/control", b'{"cmd": "ping", "id": "p1"}', qos=1)
            await op.publish("ghostpi/t-001/control", b'{"cmd": "reboot", "id": "bad"}', qos=1)
            events: dict[tuple[str, str | None], Event] = {}
            switched = False
            async with asyncio.timeout(15):
                async for msg in op.messages:
                    node, leaf = str(msg.topic).split("/")[1:]
                    assert isinstance(msg.payload, bytes)
                    if leaf == "events":
                        event = Event.model_validate_json(msg.payload)
                        events[(node, event.id)] = event
                    elif leaf == "predictions" and ("t-002", "m1") in events:
                        switched = Prediction.model_validate_json(msg.payload).resolution == 160
                    elif leaf == "state":
                        NodeState.model_validate_json(msg.payload)
                    if switched and len(events) == 5:
                        break
            fleet.stop()
        await runner
        assert events[("t-002", "m1")].ok and events[("t-002", "m1")].detail == {
            "mode": "performance",
            "resolution": 160,
        }
        assert all(events[(n, "p1")].ok for n in ("t-001", "t-002", "t-003"))
        bad = events[("t-001", "bad")]
        assert not bad.ok and bad.error and "unknown command" in bad.error
        # the retained state reflects the new mode, and a clean stop left retained 'offline'
        async with connected(cfg, identifier="test-after") as after:
            await after.subscribe("ghostpi/t-002/+", qos=1)
            retained: dict[str, bytes] = {}
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for msg in after.messages:
                        assert isinstance(msg.payload, bytes)
                        retained[str(msg.topic).rsplit("/", 1)[1]] = msg.payload
        assert retained["status"] == b"offline"
        assert json.loads(retained["state"])["mode"] == "performance"

    asyncio.run(scenario())


def test_simulate_reports_an_unreachable_broker(tmp_path: Path) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=free_port(), connect_timeout=2)
    with pytest.raises(MqttError, match="EDGE_MQTT__HOST"):
        asyncio.run(SimulatedFleet(cfg, SimOptions(nodes=2)).run())


def test_procs_share_the_fleet_and_the_ids_continue() -> None:
    from edge_node.fleet.simprocs import shares

    assert shares(10, 3) == [(1, 4), (5, 3), (8, 3)]
    assert shares(2, 4) == [(1, 1), (2, 1)]
    ids = [i for first, count in shares(1200, 3) for i in node_ids(count, "x", first, 1200)]
    assert ids == node_ids(1200, "x")


@pytest.mark.timeout(90)
def test_simulate_over_two_processes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """--procs 2: two children, each with its half and a 'proc' field on its lines; SIGTERM reaches both."""
    sim = Simulator(mosquitto.port, tmp_path, "--nodes", "7", "--procs", "2", "--rate", "2", "--heartbeat", "1")
    try:
        online = [sim.wait_event("online", timeout=30) for _ in range(2)]
        assert sorted((o["proc"], o["nodes"]) for o in online) == [(0, 4), (1, 3)]
        bus = Collector(mosquitto.port, ("ghostpi/+/status",))
        try:
            for i in range(1, 8):  # one fleet: ids 001-007, whichever process runs them
                bus.wait(f"ghostpi/sim-{i:03d}/status", lambda m: m.payload == b"online", timeout=10)
        finally:
            bus.close()
        sim.proc.send_signal(signal.SIGTERM)
        stopped = [sim.wait_event("stopped", timeout=30) for _ in range(2)]
        assert sum(s["nodes_online"] for s in stopped) == 7
        assert sim.proc.wait(15) == 0
    finally:
        sim.close()


@pytest.mark.timeout(120)
def test_sigterm_reaches_a_flooded_loop(mosquitto: Mosquitto) -> None:
    """A signal that arrives while the loop's self-pipe is full still stops the fleet.

    asyncio's ``add_signal_handler`` learns of a signal only from a byte in its self-pipe, and every
    ``call_soon_threadsafe`` (aiomqtt makes one per socket write it waits on) writes one byte too: with
    thousands of connections on a busy loop the pipe is full, the signal's byte is dropped and SIGTERM is
    missed. The regression fills the pipe on purpose, with the loop held, then signals."""
    cfg = MqttConfig(host="127.0.0.1", port=mosquitto.port)

    async def scenario() -> SimStats:
        fleet = SimulatedFleet(cfg, SimOptions(nodes=2, rate=5, seed=1, id_prefix="sig-", snapshots=False))
        runner = asyncio.create_task(fleet.run())
        async with connected(cfg, identifier="test-sig-watch") as op:  # wait until the fleet is up
            await op.subscribe("ghostpi/+/status", qos=1)
            online: set[str] = set()
            async with asyncio.timeout(30):
                async for msg in op.messages:
                    if msg.payload == b"online":
                        online.add(str(msg.topic))
                    if len(online) == 2:
                        break
        loop = asyncio.get_running_loop()
        signalled = threading.Event()

        def flood() -> None:
            for _ in range(100_000):  # far more one-byte writes than a socketpair holds
                loop.call_soon_threadsafe(lambda: None)
            os.kill(os.getpid(), signal.SIGTERM)
            signalled.set()

        thread = threading.Thread(target=flood)
        thread.start()
        assert signalled.wait(60)  # the loop is held here while the pipe fills and the signal arrives
        thread.join()
        return await asyncio.wait_for(runner, 60)

    stats = asyncio.run(scenario())
    assert stats.elapsed_s >= 0  # run() returned: it saw the SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # and gave the handler back
