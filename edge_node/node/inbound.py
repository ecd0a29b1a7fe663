"""What arrives over MQTT and who takes it: commands go to their handler, Home Assistant's birth message to
discovery; and what the node says on every (re)connect. This is the link's ``Inbound``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from edge_node.node.commands import CommandHandler
from edge_node.node.discovery import HaDiscovery

__all__ = ["NodeInbound"]


class NodeInbound:
    def __init__(
        self,
        commands: CommandHandler,
        discovery: HaDiscovery | None,
        *,
        on_connect: Sequence[Callable[[], None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.commands = commands
        self.discovery = discovery
        self._on_connect = tuple(on_connect)
        self._clock = clock

    @property
    def subscriptions(self) -> tuple[str, ...]:
        topics = tuple(self.commands.routes)
        return topics if self.discovery is None else (*topics, self.discovery.status_topic)

    async def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if self.commands.accepts(topic):
            await self.commands.handle(topic, payload, retained=retained, now=self._clock())
        elif self.discovery is not None and topic == self.discovery.status_topic:
            self.discovery.on_status(payload)

    async def on_connect(self) -> None:
        for say in self._on_connect:
            say()
