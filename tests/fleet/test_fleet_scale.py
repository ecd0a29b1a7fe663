"""200 simulated nodes at 10 Hz on a real mosquitto; the monitor sees them all, then sees crashed ones go offline.

Ages are bounded at 5 s, not the 0.1 s a 10 Hz node keeps on a quiet machine: CI runs this under load."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.brokers import Mosquitto
from tests.support.fleet_procs import Simulator, monitor_snapshot

NODES, KILL, KEEPALIVE = 200, 20, 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_monitor_follows_a_fleet_of_200_through_crashes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sim = Simulator(
        mosquitto.port, tmp_path,
        "--nodes", str(NODES), "--rate", "10", "--keepalive", str(KEEPALIVE), "--heartbeat", "2",
        "--kill", str(KILL), "--seed", "7", "--duration", "60",
    )  # fmt: skip
    # The crash comes by SIGUSR1 once the whole fleet has been seen, not after a fixed time: on a loaded CI the
    # first snapshot can take longer than any fixed delay (stop 23's CI took its snapshot after the kill).
    try:
        online = sim.wait_event("online", timeout=30)
        assert online["nodes"] == NODES and online["failed"] == 0

        snap = monitor_snapshot(mosquitto.port, tmp_path)
        assert snap["summary"]["online"] == NODES, snap["summary"]
        assert snap["summary"]["offline"] == snap["summary"]["stale"] == 0
        for row in snap["nodes"]:
            assert row["prediction_age_s"] is not None and row["prediction_age_s"] < 5.0, row
            assert row["label"] and 0 < row["confidence"] <= 1 and row["resolution"] == 224
            assert row["model_version"] == "1.0.0" and row["mode"] == "high"

        sim.proc.send_signal(signal.SIGUSR1)
        killed = sim.wait_event("killed", timeout=20)
        victims = set(killed["nodes"])
        assert len(victims) == KILL
        # crashed nodes: their sockets are closed (as a killed process's are), so the broker publishes their wills
        # at once; the bound is 1.5 x keepalive all the same (a silent network loss: tests/node/test_node_partition.py)
        deadline = killed["received"] + KEEPALIVE * 1.5
        while True:
            snap = monitor_snapshot(mosquitto.port, tmp_path, timeout=3)
            offline = {row["node"] for row in snap["nodes"] if row["status"] == "offline"}
            if offline == victims or time.monotonic() > deadline:
                break
        seen_after = time.monotonic() - killed["received"]
        assert offline == victims, f"offline {sorted(offline)} vs killed {sorted(victims)}"
        assert seen_after <= KEEPALIVE * 1.5, seen_after
        assert snap["summary"]["online"] == NODES - KILL
        survivors = [row for row in snap["nodes"] if row["online"]]
        assert all(row["prediction_age_s"] < 5.0 for row in survivors)

        # a clean stop publishes 'offline' for every remaining node before disconnecting
        sim.proc.send_signal(signal.SIGTERM)
        stopped = sim.wait_event("stopped", timeout=30)
        assert stopped["killed"] == KILL, stopped
        assert sim.proc.wait(15) == 0
        snap = monitor_snapshot(mosquitto.port, tmp_path, timeout=3)
        assert snap["summary"]["offline"] == NODES, snap["summary"]
    finally:
        sim.close()
