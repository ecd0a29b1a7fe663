"""The link as an async context manager on a real mosquitto: ``async with link.serve(inbound)`` connects,
subscribes to what ``inbound`` asks for, hands it each message and each connect, and on the way out sends what
is queued, then ``offline``; a failure no retry can fix comes out of ``running`` and of the ``async with``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_node.config import MqttConfig
from edge_node.errors import ConfigError
from edge_node.mqtt import Link
from edge_node.wire import OFFLINE, ONLINE, Topics
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector

T = Topics("ghostpi", "served")


@dataclass
class Recorder:
    subscriptions: tuple[str, ...] = (T.control,)
    connects: int = 0
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload, retained))
        self.arrived.set()

    async def on_connect(self) -> None:
        self.connects += 1
        self.arrived.set()


async def _until(inbound: Recorder, done: object) -> None:
    async with asyncio.timeout(10):
        while not (done() if callable(done) else done):
            inbound.arrived.clear()
            await inbound.arrived.wait()


def test_serve_connects_subscribes_delivers_and_says_offline_on_exit(mosquitto: Mosquitto, bus: Collector) -> None:
    async def scenario() -> Link:
        inbound = Recorder()
        link = Link(MqttConfig(host="127.0.0.1", port=mosquitto.port), T, client_id="served")
        async with link.serve(inbound):
            await _until(inbound, lambda: inbound.connects == 1)
            await asyncio.to_thread(bus.wait, T.status, lambda m: m.payload == ONLINE)
            await asyncio.to_thread(bus.publish, T.control, b"hello")
            await _until(inbound, lambda: inbound.messages)
            link.publish(T.events, b'{"last": true}', qos=1)
        return link

    link = asyncio.run(scenario())
    assert bus.wait(T.events).payload == b'{"last": true}'
    assert bus.wait(T.status, lambda m: m.payload == OFFLINE).at > bus.wait(T.events).at  # queued, then offline
    assert not link.connected


def test_a_failure_no_retry_fixes_comes_out_of_running_and_of_serve(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = MqttConfig(host="127.0.0.1", port=mosquitto.port, ca_file=tmp_path / "missing-ca.pem")
        link = Link(cfg, T, client_id="served")
        async with link.serve(Recorder()):
            await asyncio.wait_for(link.running(), 10)

    with pytest.raises(ConfigError, match=r"missing-ca\.pem"):
        asyncio.run(scenario())
