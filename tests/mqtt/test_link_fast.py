"""The link's QoS 0 path on a real mosquitto: batches handed to paho at once, in order, and bounded when the broker
stops taking them (the link's own queue overflows, counted, instead of paho's growing without limit)."""

from __future__ import annotations

import asyncio
import os
import signal

from edge_node.config import MqttConfig
from edge_node.mqtt.link import Link
from edge_node.wire.topics import Topics
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector

MAX_FAST = 64


async def _no_message(topic: str, payload: bytes, retained: bool) -> None:
    return None


async def _nothing() -> None:
    return None


async def _connected_link(port: int, max_fast: int = 256) -> tuple[Link, asyncio.Task[None]]:
    cfg = MqttConfig(host="127.0.0.1", port=port, protocol="5")
    link = Link(
        cfg,
        Topics("ghostpi", "fast"),
        client_id="fast",
        subscriptions=(),
        on_message=_no_message,
        on_connect=_nothing,
        max_fast=max_fast,
    )
    task = asyncio.create_task(link.run())
    for _ in range(200):
        if link.connected:
            return link, task
        await asyncio.sleep(0.05)
    raise AssertionError("the link did not connect to the test broker")


async def _stop(link: Link, task: asyncio.Task[None]) -> None:
    await link.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_fast_messages_arrive_in_order_beside_reliable_ones(mosquitto: Mosquitto) -> None:
    async def run() -> None:
        link, task = await _connected_link(mosquitto.port)
        topics = link.topics
        for i in range(200):  # fewer than the queue holds, with the sender running now and then
            link.publish_fast(topics.predictions, str(i).encode())
            if i % 50 == 0:
                link.publish(topics.events, str(i).encode(), qos=1)
            if i % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        assert link.dropped_backlog == 0
        await _stop(link, task)

    bus = Collector(mosquitto.port, ("ghostpi/fast/#",))
    try:
        asyncio.run(run())
        bus.wait("ghostpi/fast/events", lambda m: m.payload == b"150", timeout=20)
        bus.wait("ghostpi/fast/predictions", lambda m: m.payload == b"199", timeout=20)
        assert [int(m.payload) for m in bus.on("ghostpi/fast/predictions")] == list(range(200))
        assert [int(m.payload) for m in bus.on("ghostpi/fast/events")] == [0, 50, 100, 150]
    finally:
        bus.close()


def test_a_broker_that_stops_reading_fills_the_links_queue_not_paho(mosquitto: Mosquitto) -> None:
    """With the broker frozen, the kernel's socket buffers fill, the batch in paho cannot be written, and what
    comes next waits in (and overflows) the link's bounded queue."""
    assert mosquitto.proc is not None
    payload = b"x" * 65536
    sent = 600  # 39 MB: far more than loopback's socket buffers hold

    async def run() -> None:
        link, task = await _connected_link(mosquitto.port, MAX_FAST)
        assert mosquitto.proc is not None
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)
        try:
            paho = link._client._client if link._client is not None else None  # the queue under test
            assert paho is not None
            most = 0
            for i in range(sent):
                link.publish_fast(link.topics.predictions, i.to_bytes(4, "big") + payload)
                await asyncio.sleep(0)
                most = max(most, len(paho._out_packet))
            assert link.dropped_backlog > 0, "the frozen broker should have made the link's queue overflow"
            assert most <= MAX_FAST + 1, f"paho's queue grew to {most} messages: no back-pressure"
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        await _stop(link, task)

    bus = Collector(mosquitto.port, ("ghostpi/fast/predictions",))
    try:
        asyncio.run(run())
        bus.wait("ghostpi/fast/predictions", lambda m: int.from_bytes(m.payload[:4], "big") == sent - 1, timeout=30)
        got = [int.from_bytes(m.payload[:4], "big") for m in bus.on("ghostpi/fast/predictions")]
        assert got == sorted(set(got)), "messages were reordered or doubled"
        assert len(got) < sent
    finally:
        bus.close()
