"""The embedded MQTT broker (amqtt) that the node starts when no broker is configured: demo use only."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from edge_node.errors import MissingExtraError, MqttError

__all__ = ["EmbeddedBroker", "pick_port"]

log = logging.getLogger(__name__)


def pick_port(host: str, preferred: int) -> int:
    """``preferred`` if nothing listens there, else a free port the OS chooses."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise MqttError(f"cannot find a free port on {host} for the embedded broker")


class EmbeddedBroker:
    """An anonymous amqtt broker bound to loopback. Never expose it: it has no authentication."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.requested = port
        self.port = port
        self._broker: Any = None

    async def start(self) -> int:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise MissingExtraError("the embedded demo broker (or set EDGE_MQTT__HOST)", "demo") from exc
        self.port = pick_port(self.host, self.requested)
        if self.port != self.requested:
            log.warning(
                "port %d is taken (another broker?); the embedded broker uses port %d",
                self.requested,
                self.port,
            )
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            raise MqttError(f"the embedded broker could not start on {self.host}:{self.port}: {exc}") from exc
        log.info("embedded MQTT broker (amqtt) listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Shut the broker down; bounded, because amqtt's shutdown waits on each client's connection handler
        and one that never sees its socket close would otherwise keep ``edge-node run`` from exiting."""
        if self._broker is None:
            return
        broker, self._broker = self._broker, None
        try:
            async with asyncio.timeout(grace):
                await broker.shutdown()
        except TimeoutError:
            log.warning("the embedded broker did not shut down within %.0f s; exiting without waiting for it", grace)
        except Exception:
            log.debug("embedded broker shutdown failed", exc_info=True)
