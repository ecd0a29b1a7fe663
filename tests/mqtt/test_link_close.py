"""The link's clean shutdown on a real mosquitto: what is queued when the node stops is sent once, in order.

Regression: ``Link.close()`` used to pop the reliable queue while the sender task was still sending its head,
so a message was lost or sent twice, and the sender could die with "pop from an empty deque" (seen as a
node exiting 1 on SIGTERM during an update).
"""

from __future__ import annotations

import asyncio
import json

from edge_node.config import MqttConfig
from edge_node.messages import OFFLINE
from edge_node.mqtt.link import Link
from edge_node.topics import Topics
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector


async def _no_message(topic: str, payload: bytes, retained: bool) -> None:
    return None


async def _nothing() -> None:
    return None


async def _close_with_a_backlog(port: int, count: int) -> None:
    topics = Topics("ghostpi", "closer")
    cfg = MqttConfig(host="127.0.0.1", port=port, protocol="5")
    link = Link(cfg, topics, client_id="closer", subscriptions=(), on_message=_no_message, on_connect=_nothing)
    task = asyncio.create_task(link.run())
    for _ in range(200):
        if link.connected:
            break
        await asyncio.sleep(0.05)
    assert link.connected, "the link did not connect to the test broker"
    for i in range(count):
        link.publish(topics.events, json.dumps({"i": i}).encode(), qos=1)
    await asyncio.sleep(0)  # the sender takes the head of the queue ...
    await link.close()  # ... while close flushes the rest
    assert not task.done(), f"the link's task ended during close: {task.exception() if task.done() else ''}"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_close_sends_every_queued_message_once_in_order_then_offline(mosquitto: Mosquitto) -> None:
    count = 300
    bus = Collector(mosquitto.port, ("ghostpi/closer/#",))
    try:
        asyncio.run(_close_with_a_backlog(mosquitto.port, count))
        bus.wait("ghostpi/closer/status", lambda m: m.payload == OFFLINE, timeout=20)
        got = [m.json()["i"] for m in bus.on("ghostpi/closer/events")]
        assert got == list(range(count)), f"{len(got)} events, first differences: {_diff(got, count)}"
    finally:
        bus.close()


def _diff(got: list[int], count: int) -> list[tuple[int, int | None]]:
    want = list(range(count))
    return [(i, got[i] if i < len(got) else None) for i in range(count) if i >= len(got) or got[i] != want[i]][:5]
