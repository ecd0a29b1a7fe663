"""A large fleet's retained picture and heartbeats, published straight to a test broker (no simulator).

``simulate`` at 10,000 nodes needs 10,000 connections and minutes to start on a loaded 2-core machine; what the
dashboard's table sees of such a fleet is each node's retained status and state and one heartbeat every 10 s,
which one paho client publishes here in a couple of seconds, then at the fleet's rate on a thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_node.fleet.simnode import SimNode

__all__ = ["FleetFeed", "fleet_ids"]


def fleet_ids(count: int) -> list[str]:
    return [f"fleet-{i:05d}" for i in range(count)]


@dataclass
class FleetFeed:
    """``count`` nodes; every ``offline_every``-th one (fleet-00000, ...) retained ``offline``."""

    port: int
    count: int
    offline_every: int = 1000
    prefix: str = "ghostpi"
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.ids = fleet_ids(self.count)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet-feed")
        self._client.max_queued_messages_set(0)
        self._client.connect("127.0.0.1", self.port, keepalive=30)
        self._client.loop_start()
        sims = [SimNode(node) for node in self.ids[:10]]  # ten distinct payload shapes are plenty
        self._beats = [sim.heartbeat(server=f"127.0.0.1:{self.port}", failovers=i) for i, sim in enumerate(sims)]
        self._states = [sim.state() for sim in sims]

    def offline(self, index: int) -> bool:
        return index % self.offline_every == 0

    def seed(self, timeout: float = 120.0) -> None:
        """Retained status, state and a heartbeat for every node; returns once the broker has them all."""
        last = None
        for i, node in enumerate(self.ids):
            status = b"offline" if self.offline(i) else b"online"
            self._client.publish(f"{self.prefix}/{node}/status", status, qos=1, retain=True)
            self._client.publish(f"{self.prefix}/{node}/state", self._states[i % 10], qos=1, retain=True)
            last = self._client.publish(f"{self.prefix}/{node}/heartbeat", self._beats[i % 10], qos=1)
        assert last is not None
        last.wait_for_publish(timeout)
        assert last.is_published(), "the broker did not take the fleet's retained picture"

    def start(self, period: float = 10.0) -> FleetFeed:
        """One heartbeat per online node every ``period`` seconds, spread in tenths of a second."""
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()
        return self

    def _run(self, period: float) -> None:
        online = [(i, n) for i, n in enumerate(self.ids) if not self.offline(i)]
        step = 0.1
        per_step = max(1, round(len(online) * step / period))
        next_at, at = time.monotonic(), 0
        while not self._stop.is_set():
            for i, node in online[at : at + per_step]:
                self._client.publish(f"{self.prefix}/{node}/heartbeat", self._beats[i % 10], qos=0)
                self.sent += 1
            at = (at + per_step) % len(online)
            next_at += step
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._client.loop_stop()
        self._client.disconnect()
