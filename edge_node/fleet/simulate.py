"""``edge-node simulate``: a fleet of fake nodes on a real broker, for dashboards, tests and load.

Every simulated node has its own MQTT connection with its own last will, so stopping it cleanly publishes
``offline`` and killing it (closing the TCP connection without DISCONNECT, like a crashed process) makes
the broker publish the will. All connections share one asyncio loop (aiomqtt), which keeps 200 nodes at
10 Hz within one core.

With several servers (``EDGE_MQTT__HOSTS``) each node starts at a random one and, when its connection drops,
fails over to the next like a real node's link (``edge_node.mqtt.servers``): it sets its will again, publishes
retained ``online`` and state, re-subscribes, and sends the QoS 1 events (``--events S``) that were not yet
acknowledged. ``--progress S`` prints how many nodes are connected every S seconds.

Machine-readable progress goes to stdout as JSON lines (``online``, ``progress``, ``killed``, ``stopped`` with
stats), so tests and scripts can drive it without a terminal: ``--kill K --kill-after S`` drops K nodes after S seconds,
``SIGUSR1`` drops K more (at least one) at any time, ``SIGINT``/``SIGTERM`` stop every node cleanly, also while
the fleet is still connecting, and however busy the loop is (``fleet.signals``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import aiomqtt

from edge_node.config import MqttConfig
from edge_node.errors import MqttError
from edge_node.fleet.signals import loop_signals
from edge_node.fleet.simnode import SimNode
from edge_node.mqtt.connect import DEFAULT_HOST, aiomqtt_client, describe, halt
from edge_node.mqtt.link import SUBSCRIBE_QOS
from edge_node.mqtt.servers import Backoff, ServerOrder
from edge_node.wire import OFFLINE, ONLINE, Event, Topics

__all__ = ["SimOptions", "SimStats", "SimulatedFleet", "node_ids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimOptions:
    nodes: int
    rate: float = 10.0  # predictions per second per node
    duration: float | None = None  # seconds after every node is online; None runs until stopped
    id_prefix: str = "sim-"
    topic_prefix: str = "ghostpi"
    heartbeat: float = 10.0
    keepalive: int = 10
    kill: int = 0
    kill_after: float | None = None
    seed: int | None = None
    snapshots: bool = True  # answer the snapshot command with a made-up JPEG
    connect_concurrency: int = 32
    events: float | None = None  # seconds between two QoS 1 "tick" events per node (kept until acknowledged)
    progress: float | None = None  # seconds between two "progress" lines
    first_id: int = 1  # number of the first node (a process of a fleet spread over several)
    total: int | None = None  # the whole fleet's size, for the ids' width


@dataclass
class SimStats:
    nodes_online: int = 0
    connect_failures: int = 0
    predictions: int = 0  # attempted: a publish cut short by a lost connection or the stop is counted
    heartbeats: int = 0
    commands: int = 0
    late_ticks: int = 0  # ticks that started more than one period late: the simulator could not keep up
    events_made: int = 0  # QoS 1 tick events created
    events_acked: int = 0  # ... acknowledged by the broker (the rest were queued at the end)
    connects: int = 0
    failovers: int = 0  # connections made to another server than the node's previous one
    lost: int = 0  # connections that dropped (not killed, not stopped)
    dropped_offline: int = 0  # predictions not sent while a node was away from every server (rate x time away)
    killed: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data["killed"] = len(self.killed)
        data["predictions_per_s"] = round(self.predictions / self.elapsed_s, 1) if self.elapsed_s else 0.0
        return data


def node_ids(count: int, prefix: str, first: int = 1, total: int | None = None) -> list[str]:
    """``count`` ids from number ``first``, zero-padded for a fleet of ``total`` (default: ``count``)."""
    width = max(3, len(str(total or count)))
    return [f"{prefix}{i:0{width}d}" for i in range(first, first + count)]


def _tick(node_id: str, seq: int) -> bytes:
    """A QoS 1 event that counts: ``--events`` makes one per node every S seconds, numbered per node."""
    return Event(id=f"tick-{seq}", cmd="tick", ok=True, detail={"node": node_id, "seq": seq}).to_bytes()


def _emit(event: str, **data: object) -> None:
    print(json.dumps({"event": event, "ts": round(time.time(), 3), **data}), flush=True)


def _abort(client: aiomqtt.Client) -> None:
    """Drop the TCP connection without an MQTT DISCONNECT, so the broker publishes the node's will.

    aiomqtt has no public "crash" switch, so this reaches its paho client's socket (and marks the
    disconnection error as seen): the only private access in the simulator.
    """
    client._disconnected.add_done_callback(lambda fut: fut.cancelled() or fut.exception())
    sock = client._client.socket()
    if isinstance(sock, socket.socket):  # ssl.SSLSocket included
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Node:
    def __init__(self, sim: SimNode, topics: Topics, order: ServerOrder) -> None:
        self.sim = sim
        self.topics = topics
        self.order = order
        self.client: aiomqtt.Client | None = None
        self.killed = False
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.lost_at: float | None = None  # monotonic time of the connection's loss, until the failover
        self.pending: deque[bytes] = deque(maxlen=1000)  # QoS 1 events not yet acknowledged (the Link's queue)
        self.next_event = 0
        self.failures = 0


class SimulatedFleet:
    def __init__(self, cfg: MqttConfig, opts: SimOptions) -> None:
        if opts.nodes < 1 or opts.rate <= 0:
            raise ValueError("need at least one node and a positive rate")
        self.cfg = cfg
        self.opts = opts
        self.stats = SimStats()
        self._rng = random.Random(opts.seed)
        self._servers = cfg.servers(DEFAULT_HOST)
        self._backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._live: dict[str, _Node] = {}
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(opts.connect_concurrency)
        self._reconnects: set[asyncio.Task[None]] = set()
        self._connected: list[_Node] = []  # every node's first connection, for a stop while the fleet connects

    # --- one node -------------------------------------------------------------------------------------

    def _new_node(self, node_id: str) -> _Node:
        topics = Topics(self.opts.topic_prefix, node_id)
        sim = SimNode(node_id, rng=random.Random(self._rng.random()), snapshots=self.opts.snapshots)
        return _Node(sim, topics, ServerOrder(self._servers, random.Random(self._rng.random())))

    async def _connect(self, node: _Node, *, gated: bool = True) -> bool:
        """One attempt on the node's current server: will, retained online and state, subscriptions.

        The fleet's first connects share ``connect_concurrency`` slots (a start that does not flood the broker);
        a failover does not (``gated=False``): real nodes do not wait for each other, and a slot held for a whole
        connect timeout by a stalled server would make the simulator, not the cluster, set the recovery time."""
        topics = node.topics
        will = aiomqtt.Will(topics.status, OFFLINE, qos=1, retain=True)
        client = aiomqtt_client(
            self.cfg.for_server(node.order.current),
            identifier=f"ghostpi-sim-{node.sim.node_id}",
            will=will,
            keepalive=self.opts.keepalive,
        )
        try:
            if gated:
                async with self._slots:
                    await client.__aenter__()
            else:
                await client.__aenter__()
            await client.publish(topics.status, ONLINE, qos=1, retain=True)
            await client.publish(topics.state, node.sim.state(), qos=1, retain=True)
            await client.subscribe([(topics.control, SUBSCRIBE_QOS), (topics.fleet_control, SUBSCRIBE_QOS)])
        except aiomqtt.MqttError as exc:
            log.info("simulated node %s could not connect to %s: %s", node.sim.node_id, node.order.current, exc)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            return False
        node.client = client
        node.failures = 0
        if node.lost_at is not None:
            self.stats.dropped_offline += round((time.monotonic() - node.lost_at) * self.opts.rate)
            node.lost_at = None
        self.stats.connects += 1
        self.stats.failovers += node.order.connected()
        return True

    async def _first_connect(self, node_id: str) -> _Node | None:
        """Connect to the first server that answers, from a random start; None when none does."""
        node = self._new_node(node_id)
        for _ in self._servers:
            if await self._connect(node):
                self._connected.append(node)
                return node
            node.order.advance()
        log.warning("simulated node %s could not connect to any of %s", node_id, describe(self.cfg))
        self.stats.connect_failures += 1
        return None

    async def _connect_all(self, ids: list[str]) -> list[_Node | None]:
        return await asyncio.gather(*(self._first_connect(i) for i in ids))

    async def _reconnect(self, node: _Node) -> None:
        """Fail over along the list like a node's link: the next server at once, backoff after a whole round."""
        await asyncio.sleep(self._backoff.after_drop(self._rng))
        while not (node.killed or node.stopping or self._stop.is_set()):
            node.order.advance()
            if await self._connect(node, gated=False):
                self._live[node.sim.node_id] = node
                self._start(node)
                return
            node.failures += 1
            await asyncio.sleep(self._backoff.delay(node.failures, len(self._servers), self._rng))

    async def _publish_loop(self, node: _Node) -> None:
        assert node.client is not None
        client = node.client
        loop = asyncio.get_running_loop()
        period = 1.0 / self.opts.rate
        now = loop.time()
        next_tick = now + self._rng.uniform(0, period)  # spread the fleet's ticks over the period
        next_beat = now
        next_event = now + self._rng.uniform(0, self.opts.events) if self.opts.events else float("inf")
        while True:
            while node.pending:  # QoS 1: sent again after a failover until the broker acknowledges it
                await client.publish(node.topics.events, node.pending[0], qos=1)
                node.pending.popleft()
                self.stats.events_acked += 1
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            # Counted before the await: a publish cut short by the stop (its task cancelled) or a lost connection
            # may still have left, and a count after it missed up to one a node (a recorder then held 100.5 % of
            # what the simulators said they sent). Counted as attempts, "sent" is a ceiling and shares of it floors.
            self.stats.predictions += 1
            await client.publish(node.topics.predictions, node.sim.prediction(), qos=0)
            if now >= next_beat:
                beat = node.sim.heartbeat(server=str(node.order.current), failovers=node.order.failovers)
                await client.publish(node.topics.heartbeat, beat, qos=0)
                self.stats.heartbeats += 1
                next_beat = now + self.opts.heartbeat
            if self.opts.events and now >= next_event:
                node.next_event += 1
                node.pending.append(_tick(node.sim.node_id, node.next_event))
                self.stats.events_made += 1
                next_event = now + self.opts.events
            next_tick += period
            if next_tick < now - period:  # fell behind: count it and skip ahead instead of bursting
                self.stats.late_ticks += 1
                next_tick = now + period

    async def _command_loop(self, node: _Node) -> None:
        assert node.client is not None
        client = node.client
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            reply = node.sim.handle(payload)
            self.stats.commands += 1
            if reply.snapshot is not None:
                await client.publish(node.topics.snapshot, reply.snapshot, qos=1)
            await client.publish(node.topics.events, reply.event, qos=1)
            if reply.state_changed:
                await client.publish(node.topics.state, node.sim.state(), qos=1, retain=True)

    def _start(self, node: _Node) -> None:
        node.tasks = [
            asyncio.create_task(self._publish_loop(node)),
            asyncio.create_task(self._command_loop(node)),
        ]
        for task in node.tasks:
            task.add_done_callback(lambda done, node=node: self._task_ended(node, done))  # type: ignore[misc]

    def _task_ended(self, node: _Node, task: asyncio.Task[None]) -> None:
        """One loop of a node ended: unless we are stopping it, its connection is gone; end the other loop, and
        fail over to the next server."""
        if task.cancelled():
            return
        exc = task.exception()
        if self._live.get(node.sim.node_id) is not node:
            return  # the other loop already handled this connection's end
        self._live.pop(node.sim.node_id, None)
        for other in node.tasks:
            other.cancel()
        if node.killed or node.stopping or self._stop.is_set():
            return
        log.info("simulated node %s lost its connection to %s: %s", node.sim.node_id, node.order.current, exc)
        self.stats.lost += 1
        node.lost_at = time.monotonic()
        client, node.client = node.client, None
        if client is not None:
            _abort(client)  # the socket is gone already; this only lets aiomqtt's client go
        retry = asyncio.create_task(self._reconnect(node))
        self._reconnects.add(retry)
        retry.add_done_callback(self._reconnects.discard)

    async def _stop_node(self, node: _Node) -> None:
        """Clean shutdown: retained ``offline`` first, then DISCONNECT (so the will is not sent)."""
        node.stopping = True
        await asyncio.gather(*(halt(task) for task in node.tasks))
        if node.client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await node.client.publish(node.topics.status, OFFLINE, qos=1, retain=True, timeout=5)
            await node.client.__aexit__(None, None, None)

    def kill(self, count: int) -> list[str]:
        """Crash ``count`` random live nodes; returns their ids."""
        victims = self._rng.sample(sorted(self._live), min(count, len(self._live)))
        for node_id in victims:
            node = self._live.pop(node_id)
            node.killed = True
            if node.client is not None:
                _abort(node.client)
            for task in node.tasks:
                task.cancel()  # a swallowed cancel is harmless: the next publish fails on the dead socket
        self.stats.killed.extend(victims)
        return victims

    # --- the fleet ------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> SimStats:
        """Connect the fleet, run it until ``duration`` or a signal, stop every node cleanly.

        The signal handlers are in place before the first connect, so a SIGTERM while thousands of nodes
        connect stops the ones already up cleanly instead of killing the process (``fleet.signals``)."""
        loop = asyncio.get_running_loop()
        actions = {signal.SIGINT: self.stop, signal.SIGTERM: self.stop, signal.SIGUSR1: self._kill_more}
        with loop_signals(loop, actions) if sys.platform != "win32" else contextlib.nullcontext():
            return await self._run()

    async def _run(self) -> SimStats:
        ids = node_ids(self.opts.nodes, self.opts.id_prefix, self.opts.first_id, self.opts.total)
        started = time.monotonic()
        connecting = asyncio.create_task(self._connect_all(ids))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # stopped while connecting: the nodes already up say offline
            await halt(connecting)
            await asyncio.gather(*(self._stop_node(n) for n in self._connected))
            _emit("stopped", **self.stats.summary())
            return self.stats
        stopping.cancel()
        nodes = [n for n in connecting.result() if n is not None]
        if not nodes:
            raise MqttError(
                f"no simulated node could connect to {describe(self.cfg)}; "
                "check EDGE_MQTT__HOST (or EDGE_MQTT__HOSTS), EDGE_MQTT__PORT and credentials"
            )
        for node in nodes:
            self._live[node.sim.node_id] = node
            self._start(node)
        self.stats.nodes_online = len(nodes)
        _emit(
            "online",
            nodes=len(nodes),
            failed=self.stats.connect_failures,
            connect_s=round(time.monotonic() - started, 2),
        )
        t0 = time.monotonic()
        scheduled = self.opts.kill > 0 and self.opts.kill_after is not None
        kill_task = asyncio.create_task(self._scheduled_kill()) if scheduled else None
        progress = asyncio.create_task(self._progress()) if self.opts.progress else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.opts.duration)
        self._stop.set()  # reconnects in progress give up
        for task in (kill_task, progress, *self._reconnects):
            if task is not None:
                task.cancel()
        self.stats.elapsed_s = round(time.monotonic() - t0, 3)
        await asyncio.gather(*(self._stop_node(n) for n in list(self._live.values())))
        _emit("stopped", **self.stats.summary())
        return self.stats

    async def _progress(self) -> None:
        assert self.opts.progress is not None
        while True:
            await asyncio.sleep(self.opts.progress)
            _emit(
                "progress",
                connected=len(self._live),
                lost=self.stats.lost,
                failovers=self.stats.failovers,
                predictions=self.stats.predictions,
                events_made=self.stats.events_made,
                events_acked=self.stats.events_acked,
            )

    async def _scheduled_kill(self) -> None:
        assert self.opts.kill_after is not None
        await asyncio.sleep(self.opts.kill_after)
        _emit("killed", nodes=self.kill(self.opts.kill))

    def _kill_more(self) -> None:
        _emit("killed", nodes=self.kill(max(1, self.opts.kill)))
