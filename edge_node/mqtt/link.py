"""The node's MQTT link: one connection kept alive for the node's whole life.

It sets the ``offline`` will, publishes ``online`` and re-subscribes on every connect, reconnects with
exponential backoff and jitter (tenacity), and keeps reliable messages (events, state) queued while the
broker is away. Predictions (QoS 0) are dropped while disconnected: a stale prediction is worth nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from edge_node.config import MqttConfig
from edge_node.messages import OFFLINE, ONLINE
from edge_node.mqtt.connect import aiomqtt_client, broker_host
from edge_node.topics import Topics

__all__ = ["Link", "Outgoing"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class Link:
    """Owns the connection. ``run`` never returns until cancelled; broker outages are retried forever."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        *,
        client_id: str,
        subscriptions: tuple[str, ...],
        on_message: Callable[[str, bytes], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
        max_reliable: int = 1000,
        max_fast: int = 256,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.client_id = client_id
        self.subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect = on_connect
        self._reliable: deque[Outgoing] = deque(maxlen=max_reliable)
        self._fast: deque[Outgoing] = deque(maxlen=max_fast)
        self._wake = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connected = False
        self.connects = 0
        self.dropped = 0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    # --- publishing ------------------------------------------------------------------------------------

    def publish_fast(self, topic: str, payload: bytes) -> bool:
        """QoS 0, best effort: dropped (and counted) while disconnected or when the sender lags."""
        if not self.connected:
            self.dropped += 1
            return False
        if len(self._fast) == self._fast.maxlen:
            self.dropped += 1
        self._fast.append(Outgoing(topic, payload))
        self._wake.set()
        return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queued until sent; survives broker outages (the oldest is dropped past ``max_reliable``)."""
        self._reliable.append(Outgoing(topic, payload, qos, retain))
        self._wake.set()

    # --- connection loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            retrying = AsyncRetrying(
                wait=wait_exponential_jitter(initial=self.cfg.reconnect_min, max=self.cfg.reconnect_max),
                retry=retry_if_exception_type((aiomqtt.MqttError, OSError)),
                before_sleep=self._log_retry,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    await self._session()  # returns after a connection that worked was lost
            # A session that connected and then dropped starts a fresh backoff.

    def _log_retry(self, state: object) -> None:
        outcome = getattr(state, "outcome", None)
        sleep = getattr(getattr(state, "next_action", None), "sleep", 0.0)
        exc = outcome.exception() if outcome is not None else None
        log.warning(
            "MQTT broker %s:%s unreachable (%s); retrying in %.1fs",
            broker_host(self.cfg),
            self.cfg.port,
            exc,
            sleep,
        )

    async def _session(self) -> None:
        will = aiomqtt.Will(self.topics.status, OFFLINE, qos=1, retain=True)
        client = aiomqtt_client(self.cfg, identifier=self.client_id, will=will)
        async with client:
            self._client = client
            self.connected = True
            self.connects += 1
            log.info("connected to MQTT broker %s:%s as %s", broker_host(self.cfg), self.cfg.port, self.client_id)
            try:
                await client.publish(self.topics.status, ONLINE, qos=1, retain=True, timeout=PUBLISH_TIMEOUT)
                for topic in self.subscriptions:
                    await client.subscribe(topic, qos=1, timeout=PUBLISH_TIMEOUT)
                await self._on_connect()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._sender(client))
                    tg.create_task(self._reader(client))
            except* aiomqtt.MqttError as group:
                log.warning("MQTT connection lost: %s", group.exceptions[0])
            finally:
                self.connected = False
                self._client = None
                self._fast.clear()

    async def _reader(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            try:
                await self._on_message(str(message.topic), bytes(payload))
            except Exception:  # a handler bug must never take the link down
                log.exception("handling a message on %s failed", message.topic)

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._reliable and not self._fast:
                self._wake.clear()
                await self._wake.wait()
            if self._reliable:
                item = self._reliable[0]
                await client.publish(
                    item.topic, item.payload, qos=item.qos, retain=item.retain, timeout=PUBLISH_TIMEOUT
                )
                self._reliable.popleft()  # only once the broker has it
            elif self._fast:
                item = self._fast.popleft()
                await client.publish(item.topic, item.payload, qos=0, timeout=PUBLISH_TIMEOUT)

    async def close(self) -> None:
        """Publish ``offline`` explicitly and flush what we can: a clean shutdown, not a will."""
        client = self._client
        if client is None:
            return
        try:
            while self._reliable:
                item = self._reliable.popleft()
                await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain, timeout=2.0)
            await client.publish(self.topics.status, OFFLINE, qos=1, retain=True, timeout=2.0)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish offline status on shutdown: %s", exc)
