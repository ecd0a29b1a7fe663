"""An in-process stand-in for ``edge_node.mqtt.Link``, so a real ``Node`` (real camera thread, real pipeline,
real ONNX Runtime) can be driven from a test without a broker or a process: it records what the node sends,
and hands the node messages as a broker would."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from edge_node.mqtt import Inbound

__all__ = ["FakeLink", "Sent"]


@dataclass(frozen=True)
class Sent:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class FakeLink:
    """Always connected unless ``connected`` is set False (then QoS 0 messages are dropped and counted, as the
    real link does). ``serve`` runs ``on_connect`` like a fresh connection; ``deliver`` is an incoming message."""

    connected: bool = True
    sent: list[Sent] = field(default_factory=list)
    reconnects: int = 0
    denied: int = 0
    offline_s: float = 0.0
    server: str | None = "fake:1883"
    failovers: int = 0
    dropped_offline: Counter[str] = field(default_factory=Counter)
    served: bool = False  # serve() was left: the node stopped talking
    subscriptions: tuple[str, ...] = ()  # what the node asked for when it started serving
    _inbound: Inbound | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self._record(Sent(topic, payload, qos, retain))

    def publish_fast(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            self.dropped_offline[topic.rsplit("/", 1)[-1]] += 1
            return False
        self._record(Sent(topic, payload, 0, False))
        return True

    def _record(self, item: Sent) -> None:
        self.sent.append(item)
        self._arrived.set()

    @asynccontextmanager
    async def serve(self, inbound: Inbound) -> AsyncIterator[FakeLink]:
        self._inbound = inbound
        self.subscriptions = tuple(inbound.subscriptions)
        await inbound.on_connect()
        try:
            yield self
        finally:
            self.served = True

    async def running(self) -> None:
        await asyncio.Event().wait()  # a fake connection never fails

    async def deliver(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        assert self._inbound is not None, "the node is not serving yet"
        await self._inbound.on_message(topic, payload, retained)

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    async def wait(self, topic: str, match: Callable[[Sent], bool] = lambda s: True, *, since: int = 0) -> Sent:
        """The first message on ``topic`` that matches among those sent from ``since`` (an index into ``sent``)
        on, already or still to come; within 20 s."""
        async with asyncio.timeout(20.0):
            while True:
                for s in self.sent[since:]:
                    if s.topic == topic and match(s):
                        return s
                self._arrived.clear()
                await self._arrived.wait()
