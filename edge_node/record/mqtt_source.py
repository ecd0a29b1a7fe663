"""The recorder's MQTT side: one persistent session per recorder, subscriptions shared in a ``$share`` group.

Every leaf is subscribed as ``$share/<group>/<prefix>/+/<leaf>``, so the recorders of a group each get a part of
the messages (mosquitto, EMQX and HiveMQ share at MQTT 3.1.1 and 5 alike; ``EDGE_RECORD__SHARED=false`` for a
broker that does not, and each recorder then gets everything while the tables' unique keys keep one copy). The
session survives the recorder (clean session off; at MQTT 5 for ``EDGE_RECORD__SESSION_EXPIRY``): QoS 1
messages (events, state, OTA, status, detections) that arrive while it restarts are kept by the broker and
delivered when it is back.

The hot path has no event loop in it: paho's own network thread (its threaded mode) reads the socket and hands
each message straight to the intake, which parses it and queues the row for the writer's thread. aiomqtt's
hop onto the loop cost more than the rest of the recorder (docs/benchmarks.md). The event loop keeps the
connection's life: connect, fail over along the server list with backoff, stop.

A QoS 1 message is acknowledged only after its row is committed (paho's manual acknowledgement; the writer's
thread calls the ack, which paho's threaded mode queues for its network thread). A recorder that dies in between
leaves the message with the broker, which sends it again when the session is back; a committed row sent again is
a duplicate the unique keys skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from functools import partial
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_node.config import MqttConfig, RecordConfig
from edge_node.mqtt.connect import DEFAULT_HOST, tls_context
from edge_node.mqtt.servers import Backoff, ServerOrder
from edge_node.record.intake import Intake
from edge_node.record.rows import LEAVES, QOS1_LEAVES
from edge_node.wire import Topics

__all__ = ["MqttSource", "subscriptions"]

log = logging.getLogger(__name__)

_QUIET_WARNING_S = 60.0  # subscribed this long without one message: say what to check
_WATCH_S = 1.0  # how often a connection's deferred messages and first-minute silence are looked at


def subscriptions(prefix: str, group: str, *, shared: bool) -> list[tuple[str, int]]:
    """(filter, QoS) of every leaf the recorder keeps."""
    out = []
    for leaf in LEAVES:
        topic = Topics.wildcard(prefix, leaf)
        out.append((f"$share/{group}/{topic}" if shared else topic, 1 if leaf in QOS1_LEAVES else 0))
    return out


class _Session:
    """One connection to one server. The paho client and its network thread are this object's: made in
    ``open``, ended in ``close``. paho calls the ``_on_*`` methods from that thread; ``up`` and ``down`` tell
    the event loop."""

    def __init__(self, one: MqttConfig, cfg: RecordConfig, prefix: str, intake: Intake) -> None:
        self._one = one
        self._cfg = cfg
        self._intake = intake
        self._subs = subscriptions(prefix, cfg.group, shared=cfg.shared)
        self._loop = asyncio.get_running_loop()
        self.up = asyncio.Event()  # connected and subscribed
        self.down = asyncio.Event()  # the connection ended, or was refused
        self.reason = ""
        self.received = 0
        self.deferred = 0  # QoS 1 messages left unacknowledged because the writer's queue was full
        self._ended = False
        self._v5 = cfg.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=one.client_id or f"ghostpi-record-{cfg.name}",
            clean_session=None if self._v5 else False,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            reconnect_on_failure=False,  # a lost connection ends the session; ``MqttSource`` picks the next server
            manual_ack=True,
        )
        client.connect_timeout = one.connect_timeout
        if one.username is not None:
            client.username_pw_set(one.username, one.resolved_password())
        ctx = tls_context(one)
        if ctx is not None:
            client.tls_set_context(ctx)
            if one.tls_insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    async def open(self, host: str, port: int) -> None:
        """Connect (blocking socket and TLS work, in a worker thread), then hand the socket to paho's thread."""
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._cfg.session_expiry
        connect = partial(self._client.connect, host, port, self._one.keepalive, properties=props)
        if self._v5:
            connect = partial(connect, clean_start=False)
        await asyncio.to_thread(connect)
        self._client.loop_start()

    async def close(self) -> None:
        self._ended = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def publish(self, topic: str, payload: bytes) -> None:
        """From the event loop: paho's threaded mode queues it for its network thread."""
        if not self._ended:
            self._client.publish(topic, payload, qos=0)

    # --- paho's network thread ---------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.reason = reason
            self._loop.call_soon_threadsafe(self.down.set)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self._end(f"connection refused: {rc}")
            return
        client.subscribe(self._subs)

    def _on_subscribe(self, client: paho.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        refused = sorted({str(rc) for rc in rcs if rc.is_failure})
        if refused:
            self._end(f"subscriptions refused ({', '.join(refused)}): check this recorder's rights on the broker")
            client.disconnect()
            return
        self._loop.call_soon_threadsafe(self.up.set)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._end(f"connection lost: {rc}")

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.received += 1
        ack = partial(self._ack, msg.mid, msg.qos) if msg.qos else None
        payload = msg.payload
        if not self._intake.on_message(msg.topic, payload if isinstance(payload, bytes) else bytes(payload), ack):
            self.deferred += ack is not None

    def _ack(self, mid: int, qos: int) -> None:
        """From the writer's thread, after the commit. A connection that has ended is not acknowledged on: its
        broker sends the message again to the next one, and that copy is acknowledged instead."""
        if not self._ended:
            self._client.ack(mid, qos)


class MqttSource:
    kind = "mqtt"

    def __init__(self, mqtt: MqttConfig, cfg: RecordConfig, prefix: str, intake: Intake) -> None:
        self._mqtt = mqtt
        self._cfg = cfg
        self._prefix = prefix
        self._intake = intake
        self._session: _Session | None = None
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        order = ServerOrder(self._mqtt.servers(DEFAULT_HOST))
        backoff = Backoff(self._mqtt.reconnect_min, self._mqtt.reconnect_max)
        rng = random.Random()
        failures = 0
        while True:
            server = order.current
            one = self._mqtt.for_server(server)
            session = _Session(one, self._cfg, self._prefix, self._intake)
            was_up = False
            try:
                await self._open(session, server.host, server.port, one.connect_timeout)
                was_up = True
                order.connected()
                failures = 0
                self._session = session
                self.subscribed.set()
                how = f"shared group {self._cfg.group}" if self._cfg.shared else "not shared"
                log.info("recording from MQTT %s (MQTT %s, %s)", server, self._cfg.protocol, how)
                again = await self._watch(session)
                log.warning("MQTT server %s: %s", server, session.reason)
            except (OSError, TimeoutError, ConnectionError) as exc:
                again = False
                log.warning("MQTT server %s: %s", server, exc or type(exc).__name__)
            finally:
                self._session = None
                self.subscribed.clear()
                await session.close()
            if again:
                continue  # the same server at once: nothing failed
            failures = 0 if was_up else failures + 1
            order.advance()
            delay = backoff.after_drop(rng) if was_up else backoff.delay(failures, len(order.servers), rng)
            await asyncio.sleep(delay)

    @staticmethod
    async def _open(session: _Session, host: str, port: int, limit: float) -> None:
        """Connected and subscribed within ``limit`` seconds, or the reason why not."""
        up = asyncio.ensure_future(session.up.wait())
        down = asyncio.ensure_future(session.down.wait())
        try:
            async with asyncio.timeout(limit):
                await session.open(host, port)
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise TimeoutError(f"not connected and subscribed within {limit:.0f} s") from None
        finally:
            for task in (up, down):
                task.cancel()
        if not session.up.is_set():
            raise ConnectionError(session.reason)

    async def _watch(self, session: _Session) -> bool:
        """Until the connection ends, or until it must be made again: an MQTT broker sends an unacknowledged QoS 1
        message again only to a new connection of the session, so messages the full queue left unacknowledged
        would otherwise wait for the next network failure (and hold the broker's in-flight window meanwhile).
        One warning if nothing at all arrives at first (a wrong prefix, or a broker that does not know
        ``$share``). True: connect again to the same server."""
        started = time.monotonic()
        warned = False
        while not session.down.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.down.wait(), _WATCH_S)
            if session.deferred and self._intake.has_room():
                session.reason = (f"{session.deferred} QoS 1 messages were not queued (the database fell behind); "
                                  "connecting again so that the broker sends them again")  # fmt: skip
                return True
            if not warned and session.received == 0 and time.monotonic() - started > _QUIET_WARNING_S:
                warned = True
                log.warning("no fleet message in %.0f s since subscribing to %s/+/...: is the fleet publishing "
                            "under that prefix? A broker without shared subscriptions needs EDGE_RECORD__SHARED="
                            "false (NATS: EDGE_RECORD__NATS_SERVERS)", _QUIET_WARNING_S, self._prefix)  # fmt: skip
        return False

    async def publish(self, topic: str, payload: bytes) -> None:
        session = self._session
        if session is not None:
            session.publish(topic, payload)
