"""The recorder's MQTT side: one persistent session per recorder, subscriptions shared in a ``$share`` group.

On an MQTT 5 broker (mosquitto) every leaf is subscribed as ``$share/<group>/<prefix>/+/<leaf>``, so the
recorders of a group each get a part of the messages. The session survives the recorder (clean start off,
``EDGE_RECORD__SESSION_EXPIRY``): QoS 1 messages (events, state, OTA, status) that arrive while it restarts are
kept by the broker and delivered when it is back. MQTT 3.1.1 knows no shared subscriptions: each recorder
then gets everything and the tables' unique keys keep one copy.

A QoS 1 message is acknowledged only after its row is committed (paho's manual acknowledgement; the writer
calls the ack from its thread, and the ack is handed to the event loop that owns the connection). A recorder
that dies in between leaves the message with the broker, which sends it again when the session is back; a
committed row sent again is a duplicate the unique keys skip.
"""

from __future__ import annotations

import asyncio
import logging
import random
from functools import partial

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_node.config import MqttConfig, RecordConfig
from edge_node.mqtt.connect import DEFAULT_HOST, tls_context
from edge_node.mqtt.servers import Backoff, ServerOrder
from edge_node.record.intake import Intake
from edge_node.record.rows import LEAVES, QOS1_LEAVES
from edge_node.wire import Topics

__all__ = ["MqttSource", "subscriptions"]

log = logging.getLogger(__name__)


def subscriptions(prefix: str, group: str, *, shared: bool) -> list[tuple[str, int]]:
    """(filter, QoS) of every leaf the recorder keeps."""
    out = []
    for leaf in LEAVES:
        topic = Topics.wildcard(prefix, leaf)
        out.append((f"$share/{group}/{topic}" if shared else topic, 1 if leaf in QOS1_LEAVES else 0))
    return out


class MqttSource:
    kind = "mqtt"

    def __init__(self, mqtt: MqttConfig, cfg: RecordConfig, prefix: str, intake: Intake) -> None:
        self._mqtt = mqtt
        self._cfg = cfg
        self._prefix = prefix
        self._intake = intake
        self._client: aiomqtt.Client | None = None
        self.subscribed = asyncio.Event()

    def _make(self, one: MqttConfig) -> aiomqtt.Client:
        v5 = one.protocol == "5"
        server = one.servers(DEFAULT_HOST)[0]
        ctx = tls_context(one)
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._cfg.session_expiry
        client = aiomqtt.Client(
            server.host,
            server.port,
            username=one.username,
            password=one.resolved_password(),
            identifier=one.client_id or f"ghostpi-record-{self._cfg.name}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            clean_start=False,
            properties=props,
            keepalive=one.keepalive,
            timeout=one.connect_timeout,
            tls_context=ctx,
            tls_insecure=True if ctx is not None and one.tls_insecure else None,
        )
        # aiomqtt has no switch for it: paho's own, set before the connect, because a persistent session's
        # queued messages arrive right after it.
        client._client.manual_ack_set(True)
        return client

    def _ack_later(self, loop: asyncio.AbstractEventLoop, client: aiomqtt.Client, mid: int, qos: int) -> None:
        """From the writer's thread: the connection belongs to the loop, so the ack is handed to it."""
        loop.call_soon_threadsafe(self._ack, client, mid, qos)

    def _ack(self, client: aiomqtt.Client, mid: int, qos: int) -> None:
        """On the loop: acknowledge a committed message, if its connection is still the current one (after a
        reconnect the broker sends it again, and its copy is acknowledged instead)."""
        if client is self._client:
            client._client.ack(mid, qos)

    async def run(self) -> None:
        order = ServerOrder(self._mqtt.servers(DEFAULT_HOST))
        backoff = Backoff(self._mqtt.reconnect_min, self._mqtt.reconnect_max)
        rng = random.Random()
        failures = 0
        while True:
            one = self._mqtt.for_server(order.current)
            try:
                async with self._make(one) as client:
                    order.connected()
                    failures = 0
                    self._client = client
                    shared = one.protocol == "5"
                    for topic, qos in subscriptions(self._prefix, self._cfg.group, shared=shared):
                        await client.subscribe(topic, qos=qos, timeout=one.connect_timeout)
                    how = f"shared group {self._cfg.group}" if shared else "MQTT 3.1.1: no shared group"
                    log.info("recording from MQTT %s (%s)", order.current, how)
                    self.subscribed.set()
                    loop = asyncio.get_running_loop()
                    async for msg in client.messages:
                        payload = msg.payload
                        raw = payload if isinstance(payload, bytes) else str(payload).encode()
                        ack = partial(self._ack_later, loop, client, msg.mid, msg.qos) if msg.qos else None
                        self._intake.on_message(msg.topic.value, raw, ack)
            except aiomqtt.MqttError as exc:
                was_up = self._client is not None
                self._client = None
                self.subscribed.clear()
                failures = 0 if was_up else failures + 1
                log.warning("MQTT server %s: %s", order.current, exc)
                order.advance()
                delay = backoff.after_drop(rng) if was_up else backoff.delay(failures, len(order.servers), rng)
                await asyncio.sleep(delay)

    async def publish(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is not None:
            try:
                await client.publish(topic, payload, qos=0, timeout=5.0)
            except aiomqtt.MqttError as exc:
                log.debug("recorder heartbeat not sent: %s", exc)
