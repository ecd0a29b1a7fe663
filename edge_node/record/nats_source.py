"""The recorder's NATS side, where the fleet's broker is a NATS cluster (its MQTT gateway).

QoS 0 leaves (predictions, heartbeats) are read with a core subscription in a queue group: each message
goes to one recorder of the group, with no server configuration. QoS 1 leaves (events, state, OTA, status)
are read from the stream the server keeps MQTT QoS 1 messages in (``$MQTT_msgs``) through one durable pull
consumer per group: the recorders of the group fetch from it in turn, and a message is acknowledged only
after its row is committed, so neither a recorder's restart nor its crash loses one.

The connection takes the recorder's TLS settings from ``EDGE_MQTT__*`` (CA, client certificate and key): on the
fleet's cluster the client port asks for the certificate of a recorder identity (deploy/nats/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import Error as JsError

from edge_node.config import MqttConfig, RecordConfig
from edge_node.errors import RecordError
from edge_node.mqtt.tls import ssl_context
from edge_node.record.intake import Intake, subject_to_topic, topic_to_subject
from edge_node.record.rows import QOS1_LEAVES

__all__ = ["MQTT_STREAM", "NatsSource"]

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"  # where NATS's MQTT gateway stores QoS 1 messages, subjects $MQTT.msgs.<subject>
_STORED = "$MQTT.msgs."
_QOS0 = ("predictions", "heartbeat")


class NatsSource:
    kind = "nats"

    def __init__(self, cfg: RecordConfig, prefix: str, intake: Intake, mqtt: MqttConfig | None = None) -> None:
        self._cfg = cfg
        self._tls = ssl_context(mqtt) if mqtt is not None else None  # a bad file fails here, before any connect
        self._prefix = topic_to_subject(prefix)
        self._intake = intake
        self._nc: NatsClient | None = None
        self._acks: deque[Msg] = deque()  # committed rows' messages, acknowledged by the fetch loop
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        try:
            nc = await nats.connect(
                servers=list(self._cfg.nats_servers),
                name=f"ghostpi-record-{self._cfg.name}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=10,
                allow_reconnect=True,
                tls=self._tls,
            )
        except (NatsError, OSError) as exc:
            raise RecordError(f"cannot connect to NATS {','.join(self._cfg.nats_servers)}: {exc}; check "
                              "EDGE_RECORD__NATS_SERVERS") from exc  # fmt: skip
        self._nc = nc
        try:
            for leaf in _QOS0:
                await nc.subscribe(f"{self._prefix}.*.{leaf}", queue=self._cfg.group, cb=self._on_core)
            await self._stored(nc)
        finally:
            self._nc = None
            await nc.close()

    async def _on_core(self, msg: Msg) -> None:
        self._intake.on_message(subject_to_topic(msg.subject), msg.data)

    async def _stored(self, nc: NatsClient) -> None:
        """Fetch the QoS 1 leaves from the durable consumer, forever; acknowledge what was committed."""
        # a cluster serving thousands of MQTT sessions (each QoS 1 subscription is a consumer) answers its
        # JetStream API slowly: 10 s timed out every time with 2,000 simulated nodes on a loaded 2-core VM
        js = nc.jetstream(timeout=60)
        durable = f"ghostpi-record-{self._cfg.group}"
        filters = [f"{_STORED}{self._prefix}.*.{leaf}" for leaf in QOS1_LEAVES]
        config = ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=50_000,
            filter_subjects=filters,
        )  # fmt: skip
        sub = None
        while sub is None:
            try:
                await js.add_consumer(MQTT_STREAM, config)
                sub = await js.pull_subscribe_bind(durable, stream=MQTT_STREAM)
            except (JsError, NatsError, TimeoutError) as exc:
                # the stream exists once an MQTT client connected; a leader may be being elected
                log.info("waiting for NATS stream %s: %s", MQTT_STREAM, exc)
                await asyncio.sleep(1.0)
        url = nc.connected_url.netloc if nc.connected_url is not None else "?"
        log.info("recording from NATS %s (queue group %s, durable consumer %s)", url, self._cfg.group,
                 durable)  # fmt: skip
        self.subscribed.set()
        while True:
            await self._ack_committed()
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            except (JsError, NatsError) as exc:
                log.warning("fetching from %s: %s", MQTT_STREAM, exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                self._intake.on_message(subject_to_topic(msg.subject[len(_STORED) :]), msg.data,
                                        ack=partial(self._acks.append, msg))  # fmt: skip

    async def _ack_committed(self) -> None:
        while self._acks:
            msg = self._acks.popleft()
            try:
                await msg.ack()
            except NatsError as exc:  # not acknowledged: sent again after ack_wait, the unique keys keep one
                log.debug("ack failed: %s", exc)

    async def publish(self, topic: str, payload: bytes) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            try:
                await nc.publish(topic_to_subject(topic), payload)
            except NatsError as exc:
                log.debug("recorder heartbeat not sent: %s", exc)
