"""The node's MQTT link: one connection kept alive for the node's whole life.

It sets the ``offline`` will, publishes ``online`` and re-subscribes on every connect, fails over between the
servers of ``EDGE_MQTT__HOSTS`` (a random start, the next server at once, then exponential backoff and jitter
after a whole round: ``servers.py``), and keeps reliable messages (events, state) queued while the
broker is away. Predictions and heartbeats (QoS 0) are dropped while disconnected, and counted: a stale
prediction is worth nothing, but the operator learns how much was lost, and for how long (``offline_s``).
QoS 0 messages go to paho in batches, everything queued at once, without a wait per message: at hundreds of
predictions a second, aiomqtt's per-message confirmation cost more CPU than the message itself. A batch goes
only once the previous one is on the wire, so a slow broker still fills (and overflows) this link's queue
rather than paho's.

It also says what a broker refuses: with MQTT 5, a PUBACK or SUBACK reason code of "not authorized" is
logged and counted (MQTT 3.1.1 has no such codes: a broker drops a denied publish without a word). A broker
that speaks only MQTT 3.1.1 (amqtt, NATS) makes the link fall back to 3.1.1 with one warning.

Like aiomqtt's ``Client``, the link is an async context manager: ``async with link.serve(inbound):`` keeps the
connection up in a task of its own while the body runs, and on the way out sends what is queued and then
``offline``. ``inbound`` (subscriptions and handlers) is given when serving starts, so the parts that publish
through the link can be built before the part that answers what arrives.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as paho_mqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from tenacity import AsyncRetrying, retry_if_exception_type

from edge_node.config import MqttConfig
from edge_node.mqtt.connect import DEFAULT_HOST, aiomqtt_client, halt
from edge_node.mqtt.servers import Backoff, ServerOrder
from edge_node.wire import OFFLINE, ONLINE, Topics

__all__ = ["SUBSCRIBE_QOS", "Inbound", "Link", "Outgoing"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0
SHUTDOWN_FLUSH = 5.0  # seconds a clean shutdown waits for queued events and state to reach the broker
UNSUPPORTED_PROTOCOL = 132  # CONNACK reason "Unsupported protocol version" (3.1.1's return code 1, as paho maps it)
SUBSCRIBE_RETRY = 2.0  # seconds before a refused subscription is asked for again (doubling up to reconnect_max)
# The node's subscriptions (its control topics, Home Assistant's) are QoS 0. Its session is clean, so a QoS 1
# subscription would promise nothing more: what is sent while the node is away is not kept either way, and over
# one TCP connection nothing is lost. On NATS each QoS 1 subscription is a replicated JetStream consumer (a Raft
# group of its own): at 2,000 nodes the 4,000 consumers kept a fresh 3-server cluster from taking half of the
# first connects, and every consumer led by a killed server had to elect a new leader before its node could
# subscribe again (docs/benchmarks.md). A QoS 1 command is delivered to a QoS 0 subscription at QoS 0.
SUBSCRIBE_QOS = 0
DENIAL_LOG_EVERY = 60.0  # seconds between two warnings about refused publishes to the same topic


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class Inbound(Protocol):
    """Who takes what arrives: the topics to subscribe to, each message, and each (re)connect (awaited before
    anything queued is sent, so what it queues follows the ``online`` status)."""

    @property
    def subscriptions(self) -> tuple[str, ...]: ...

    async def on_message(self, topic: str, payload: bytes, retained: bool) -> None: ...

    async def on_connect(self) -> None: ...


async def _nothing() -> None:
    return None


async def _ignore(topic: str, payload: bytes, retained: bool) -> None:
    return None


class Link:
    """Owns the connection. ``run`` never returns until cancelled; broker outages are retried forever."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        *,
        client_id: str,
        subscriptions: tuple[str, ...] = (),
        on_message: Callable[[str, bytes, bool], Awaitable[None]] = _ignore,
        on_connect: Callable[[], Awaitable[None]] = _nothing,
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
        self._closing = False  # close() asks the sender, the queue's one consumer, to drain it and stop
        self._drained = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._inflight: str | None = None  # topic of the reliable publish awaiting its PUBACK
        self._last_fast: paho_mqtt.MQTTMessageInfo | None = None  # the last QoS 0 message handed to paho
        self._written = asyncio.Event()  # set on every on_publish: what the sender waits on for back-pressure
        self._denial_logged: dict[str, float] = {}
        self._probe_311 = False  # the next attempt tries MQTT 3.1.1, because MQTT 5 failed as if unsupported
        self.connected = False
        self.connects = 0
        self.dropped_offline: Counter[str] = Counter()  # by topic leaf ("predictions", "heartbeat")
        self.dropped_backlog = 0  # QoS 0 messages pushed out of a full send queue (the broker is too slow)
        self.denied = 0
        self._offline_total = 0.0  # seconds without the broker in the gaps that have ended
        self._lost_at: float | None = None  # when the current gap began (monotonic); None while connected
        self._task: asyncio.Task[None] | None = None  # the connection loop while serving
        self._rng = random.Random()
        self._order = ServerOrder(cfg.servers(DEFAULT_HOST), self._rng)  # from a random server of the list
        self._tried = self._order.current
        self._backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._failures = 0  # connect attempts failed in a row

    @property
    def server(self) -> str | None:
        """The server of the current (or latest) connection, as ``host:port``."""
        server = self._order.connected_to
        return None if server is None else str(server)

    @property
    def failovers(self) -> int:
        """Connections made to another server than the one before."""
        return self._order.failovers

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    @property
    def offline_s(self) -> float:
        """Seconds without the broker since the first connect, every gap summed (the current one too).

        A gap starts when the link notices the loss: at once when the connection is closed, but only after up to
        about 2 x keepalive when the network silently stops carrying packets (no PINGRESP came back).
        """
        current = time.monotonic() - self._lost_at if self._lost_at is not None else 0.0
        return self._offline_total + current

    # --- publishing ------------------------------------------------------------------------------------

    def publish_fast(self, topic: str, payload: bytes) -> bool:
        """QoS 0, best effort: dropped (and counted) while disconnected or when the sender lags."""
        if not self.connected:
            self.dropped_offline[topic.rsplit("/", 1)[-1]] += 1
            return False
        if len(self._fast) == self._fast.maxlen:
            self.dropped_backlog += 1
        self._fast.append(Outgoing(topic, payload))
        self._wake.set()
        return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queued until sent; survives broker outages (the oldest is dropped past ``max_reliable``, and counted)."""
        if len(self._reliable) == self._reliable.maxlen:
            self.dropped_offline[self._reliable[0].topic.rsplit("/", 1)[-1]] += 1
        self._reliable.append(Outgoing(topic, payload, qos, retain))
        self._wake.set()

    # --- serving (an async context manager, as aiomqtt's Client is) -------------------------------------------

    async def __aenter__(self) -> Link:
        """Start the connection loop in a task of its own; connecting (and reconnecting) happens there."""
        if self._task is not None:
            raise RuntimeError("the link is already serving")
        self._task = asyncio.create_task(self.run(), name="mqtt")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Send what is queued, then ``offline`` (``close``), and stop the connection loop."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            if not task.done():
                await self.close()
        finally:
            await halt(task)
        failure = None if task.cancelled() else task.exception()
        if failure is not None and exc_info[0] is None:  # not already on its way out through ``running``
            raise failure

    @asynccontextmanager
    async def serve(self, inbound: Inbound) -> AsyncIterator[Link]:
        """``async with link.serve(inbound):`` subscribes to ``inbound.subscriptions`` and hands it what arrives."""
        self.subscriptions = inbound.subscriptions
        self._on_message = inbound.on_message
        self._on_connect = inbound.on_connect
        async with self:
            yield self

    async def running(self) -> None:
        """Wait while serving; raises what ended the connection loop (a bug or a setting no retry can fix).
        Cancelling the wait leaves the loop running."""
        if self._task is not None:
            await asyncio.shield(self._task)

    # --- connection loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            retrying = AsyncRetrying(
                wait=self._wait,
                retry=retry_if_exception_type((aiomqtt.MqttError, OSError)),
                before_sleep=self._log_retry,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    await self._session()  # returns after a connection that worked was lost
            # A session that connected and then dropped fails over to the next server, after a short spread.
            self._failures = 0
            server = self._order.advance()
            delay = self._backoff.after_drop(self._rng)
            log.info("failing over to MQTT server %s in %.1fs", server, delay)
            await asyncio.sleep(delay)

    def _wait(self, state: Any) -> float:
        """tenacity's wait: the next server of the list at once, a backoff after a whole round failed."""
        if self._probe_311:
            return 0.0  # the same server again, at MQTT 3.1.1
        self._failures += 1
        delay = self._backoff.delay(self._failures, len(self._order.servers), self._rng)
        self._order.advance()
        return delay

    def _log_retry(self, state: Any) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        if self._probe_311:
            log.info("MQTT 5 connect to %s failed (%s); trying MQTT 3.1.1", self._order.current, exc)
            return
        log.warning(
            "MQTT server %s unreachable (%s); trying %s in %.1fs",
            self._tried,
            exc,
            self._order.current,
            sleep,
        )

    async def _session(self) -> None:
        probing = self._probe_311
        server = self._tried = self._order.current
        base = self.cfg.for_server(server)
        cfg = base.model_copy(update={"protocol": "3.1.1"}) if probing else base
        will = aiomqtt.Will(self.topics.status, OFFLINE, qos=1, retain=True)
        client = aiomqtt_client(cfg, identifier=self.client_id, will=will)
        self._watch_acks(client)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            self._probe_311 = not probing and cfg.protocol == "5" and _maybe_not_v5(exc)
            raise
        if probing:
            # MQTT 5 was refused or never answered (amqtt does not even answer an MQTT 5 CONNECT with a will),
            # and 3.1.1 connects: this broker does not speak MQTT 5. A cluster speaks one protocol: every server.
            log.warning(
                "the MQTT broker %s does not accept MQTT 5; using MQTT 3.1.1 from now on (set "
                "EDGE_MQTT__PROTOCOL=3.1.1 to skip the attempt; 3.1.1 cannot report refused publishes)",
                server,
            )
            self.cfg = self.cfg.model_copy(update={"protocol": "3.1.1"})
            self._probe_311 = False
        self._failures = 0
        try:
            await self._connected(client)
        finally:
            await client.__aexit__(None, None, None)

    async def _connected(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.connected = True
        self.connects += 1
        if self._lost_at is not None:
            gap = time.monotonic() - self._lost_at
            self._offline_total += gap
            self._lost_at = None
            log.info("back online after %.1f s without the broker (%d reconnects so far)", gap, self.reconnects)
        if self._order.connected():
            log.warning("failed over to MQTT server %s (%d failovers so far)", self._order.current, self.failovers)
        log.info(
            "connected to MQTT server %s (MQTT %s, client id %s unless the broker binds it to the certificate)",
            self._order.current,
            self.cfg.protocol,
            self.client_id,
        )
        try:
            await self._send(client, Outgoing(self.topics.status, ONLINE, 1, True))
            refused = [topic for topic in self.subscriptions if not await self._subscribe(client, topic)]
            await self._on_connect()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._sender(client))
                tg.create_task(self._reader(client))
                if refused:
                    tg.create_task(self._subscribe_again(client, refused))
        except* aiomqtt.MqttError as group:
            log.warning("MQTT connection lost: %s", group.exceptions[0])
        finally:
            self.connected = False
            self._lost_at = time.monotonic()
            self._client = None
            self._inflight = None
            self._last_fast = None
            self._fast.clear()

    async def _subscribe(self, client: aiomqtt.Client, topic: str) -> bool:
        granted = await client.subscribe(topic, qos=SUBSCRIBE_QOS, timeout=PUBLISH_TIMEOUT)
        failures = [code for code in granted if _is_failure(code)]
        for code in failures:
            self._refused(topic, f"subscription refused: {code}")
        return not failures

    async def _subscribe_again(self, client: aiomqtt.Client, topics: list[str]) -> None:
        """A refused subscription is asked for again, with backoff: a broker may refuse one for a while (a NATS
        cluster refused QoS 1 subscriptions while it elected new JetStream leaders after losing a server), and a
        node must not stay deaf to commands until its next reconnect. (An ACL's refusal stays a refusal; the
        retries only repeat the warning.)"""
        delay = SUBSCRIBE_RETRY
        while topics:
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
            topics = [topic for topic in topics if not await self._subscribe(client, topic)]
            if not topics:
                log.info("subscribed on %s after an earlier refusal", self._order.current)
            delay = min(delay * 2, self.cfg.reconnect_max)

    async def _reader(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            try:
                await self._on_message(str(message.topic), bytes(payload), bool(message.retain))
            except Exception:  # a handler bug must never take the link down
                log.exception("handling a message on %s failed", message.topic)

    async def _sender(self, client: aiomqtt.Client) -> None:
        """The send queues' only consumer: ``close`` asks it to drain the reliable queue rather than racing it."""
        while True:
            if self._closing:
                self._fast.clear()  # a stale prediction is not worth delaying the shutdown
                if not self._reliable:
                    self._drained.set()
                    return
            if not self._reliable and not self._fast:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._reliable:
                await self._send(client, self._reliable[0])
                self._reliable.popleft()  # only once the broker has it (or refused it for good)
            else:
                await self._send_fast(client)

    async def _send_fast(self, client: aiomqtt.Client) -> None:
        """Hand every queued QoS 0 message to paho, once the previous batch is written (back-pressure)."""
        last = self._last_fast
        if last is not None and not last.is_published():
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    while not last.is_published():
                        self._written.clear()
                        await self._written.wait()
            except TimeoutError:
                raise aiomqtt.MqttError("Operation timed out: the broker takes no messages") from None
        paho = client._client  # aiomqtt's documented escape hatch to the paho client
        fast = self._fast
        while fast:
            item = fast.popleft()
            info = paho.publish(item.topic, item.payload, 0)
            if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
                raise MqttCodeError(info.rc, "Could not publish message")
            self._last_fast = info

    async def _send(self, client: aiomqtt.Client, item: Outgoing, wait: float = PUBLISH_TIMEOUT) -> None:
        self._inflight = item.topic
        try:
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain, timeout=wait)
        finally:
            self._inflight = None

    # --- what the broker refuses ---------------------------------------------------------------------------

    def _watch_acks(self, client: aiomqtt.Client) -> None:
        """See PUBACK reason codes, which aiomqtt does not surface, and when QoS 0 batches are written: wrap
        paho's on_publish callback."""
        paho = client._client  # aiomqtt's documented escape hatch to the paho client
        inner: Any = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            self._written.set()
            if _is_failure(reason):
                self._refused(self._inflight or "(unknown topic)", f"publish refused: {reason}")
            if inner is not None:
                inner(c, userdata, mid, reason, properties)

        paho.on_publish = on_publish

    def _refused(self, topic: str, why: str) -> None:
        self.denied += 1
        now = time.monotonic()
        if now - self._denial_logged.get(topic, float("-inf")) < DENIAL_LOG_EVERY:
            return
        self._denial_logged[topic] = now
        log.error(
            "the MQTT broker refused %s on %s (client id %s): check that this node's certificate or user is the one "
            "the broker's ACL expects for node %s (%d refusals so far)",
            why,
            topic,
            self.client_id,
            self.topics.node_id,
            self.denied,
        )

    async def close(self, flush_timeout: float = SHUTDOWN_FLUSH) -> None:
        """Send what is queued, then ``offline`` explicitly: a clean shutdown, not a will.

        The sender keeps sending (it alone takes from the queue) until the queue is empty or ``flush_timeout``
        has passed; what is still queued then is lost, and said so.
        """
        client = self._client
        if client is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._drained.wait(), flush_timeout)
        except TimeoutError:
            log.warning(
                "shutting down with %d queued messages unsent: the broker did not take them", len(self._reliable)
            )
        try:
            await self._send(client, Outgoing(self.topics.status, OFFLINE, 1, True), wait=2.0)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish offline status on shutdown: %s", exc)


def _maybe_not_v5(exc: aiomqtt.MqttError) -> bool:
    """A connect failure that a broker without MQTT 5 causes: "unsupported protocol version", or no CONNACK."""
    if isinstance(exc, MqttConnectError):
        value = getattr(exc.rc, "value", exc.rc)
        return value == UNSUPPORTED_PROTOCOL
    return "timed out" in str(exc).lower()


def _is_failure(code: Any) -> bool:
    """A paho ReasonCode >= 0x80 (MQTT 5), or a SUBACK 0x80 (3.1.1's "failure")."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80
