"""``edge-node monitor``: a live fleet dashboard, or one JSON snapshot for scripts (``--once --json``).

A bare paho client on its own network thread feeds :class:`~edge_node.fleet.view.FleetView`; its callback
does one dict store per message, and decoding happens only when a frame of the dashboard is drawn.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from edge_node.config import MqttConfig
from edge_node.errors import MqttError
from edge_node.fleet.table import render, summarize
from edge_node.fleet.view import LEAVES, FleetView, NodeRow
from edge_node.mqtt.connect import DEFAULT_HOST, describe, paho_client, tool_client_id
from edge_node.mqtt.servers import ServerOrder
from edge_node.wire import Topics

__all__ = ["Handler", "MonitorClient", "MonitorOptions", "collect", "follow", "run_live", "snapshot_json"]

log = logging.getLogger(__name__)

_QOS = {"predictions": 0, "heartbeat": 0, "status": 1, "state": 1, "events": 1, "ota": 1, "snapshot": 1}

Handler = Callable[[str, bytes | bytearray], None]


@dataclass(frozen=True)
class MonitorOptions:
    prefix: str = "ghostpi"
    timeout: float = 5.0  # --once: the longest it collects
    settle: float = 1.0  # --once: stop early once the fleet picture did not change for this long
    stale: float = 30.0  # heartbeat/prediction age above which an online node is flagged
    refresh: float = 1.0  # live dashboard redraw period
    # False: heartbeats, status, state and events only (a tenth of a fleet's messages); None: True until the
    # fleet has more than large_fleet nodes (see follow)
    predictions: bool | None = None
    large_fleet: int = 500

    @property
    def leaves(self) -> tuple[str, ...]:
        return LEAVES if self.predictions is not False else tuple(leaf for leaf in LEAVES if leaf != "predictions")


def follow(client: MonitorClient, opts: MonitorOptions, nodes: int) -> None:
    """``predictions`` unset: stop following them once ``nodes`` is more than ``large_fleet``."""
    if opts.predictions is None and nodes > opts.large_fleet and "predictions" in client.leaves:
        log.info("%d nodes: following heartbeats and state, not predictions (--predictions follows them)", nodes)
        client.drop("predictions")


class MonitorClient:
    """Subscribes to every node's published topics and feeds a :class:`FleetView` from paho's thread.

    ``leaves`` go to the view (newest payload per topic wins); ``every`` maps further leaves to a handler
    that sees each message (the web dashboard keeps every command result that way). ``publish`` is for
    tools that also send commands.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        view: FleetView,
        *,
        tool: str = "monitor",
        leaves: Sequence[str] = LEAVES,
        every: Mapping[str, Handler] | None = None,
    ) -> None:
        self.cfg = cfg
        self.view = view
        self.leaves = tuple(leaves)
        self.every = dict(every or {})
        self.subscribed = threading.Event()
        self.connected = False
        self.last_error: str | None = None
        self._connack = threading.Event()
        self._refused: str | None = None
        self._order = ServerOrder(cfg.servers(DEFAULT_HOST))  # a random start; the next server after each loss
        self._client = paho_client(cfg, identifier=tool_client_id(tool))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        ingest = view.ingest  # bound once: the per-message path is this call and nothing else

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            ingest(msg.topic, msg.payload)

        self._client.on_message = on_message
        for leaf, handler in self.every.items():
            self._client.message_callback_add(Topics.wildcard(view.prefix, leaf), _each(handler))

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            self._refused = self.last_error = str(reason)
            self._connack.set()
            return
        leaves = (*self.leaves, *self.every)
        topics = [(Topics.wildcard(self.view.prefix, leaf), _QOS.get(leaf, 1)) for leaf in leaves]
        client.subscribe(topics)  # on every (re)connect: retained status/state come right after
        self.connected, self.last_error = True, None
        self._connack.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.connected = False
        if reason.is_failure:
            self.last_error = str(reason)
        self._fail_over(client)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._fail_over(client)

    def _fail_over(self, client: paho.Client) -> None:
        """paho reconnects to the host it knows: point it at the next server of the list first."""
        if len(self._order.servers) < 2:
            return
        server = self._order.advance()
        try:
            client.host, client.port = server.host, server.port
        except RuntimeError:  # paho still holds the socket: it retries the same server once more
            return
        log.info("MQTT: trying server %s next", server)

    @property
    def server(self) -> str:
        """The server connected to (or tried next)."""
        return str(self._order.current)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subscribed.set()

    def start(self) -> None:
        """Connect to the first server that answers and wait for its answer; MqttError says what to check."""
        where = describe(self.cfg)
        failure: OSError | None = None
        for _ in self._order.servers:
            server = self._order.current
            try:
                self._client.connect(server.host, server.port, keepalive=self.cfg.keepalive)
                break
            except OSError as exc:
                failure = exc
                self._order.advance()
        else:
            raise MqttError(
                f"cannot reach MQTT broker {where}: {failure}; check EDGE_MQTT__HOST (or EDGE_MQTT__HOSTS) and "
                "EDGE_MQTT__PORT"
            ) from failure
        self._client.loop_start()
        if not self._connack.wait(self.cfg.connect_timeout):
            self.stop()
            raise MqttError(f"MQTT broker {server} did not answer within {self.cfg.connect_timeout}s")
        if self._refused is not None:
            self.stop()
            raise MqttError(f"MQTT broker {server} refused the {self.cfg.username or 'anonymous'} "
                            f"client: {self._refused}")  # fmt: skip

    def start_background(self) -> None:
        """Connect without waiting, retrying forever along the server list (for long-running services); see
        ``connected``."""
        server = self._order.current
        self._client.connect_async(server.host, server.port, keepalive=self.cfg.keepalive)
        self._client.loop_start()

    def drop(self, leaf: str) -> None:
        """Stop following ``leaf`` (here and after every reconnect); thread-safe like paho's calls."""
        self.leaves = tuple(kept for kept in self.leaves if kept != leaf)
        self._client.unsubscribe(Topics.wildcard(self.view.prefix, leaf))

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> paho.MQTTMessageInfo:
        """Thread-safe; wait on the returned info for the broker's acknowledgement."""
        return self._client.publish(topic, payload, qos=qos)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _each(handler: Handler) -> Callable[[paho.Client, Any, paho.MQTTMessage], None]:
    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        handler(msg.topic, msg.payload)

    return on_message


def _picture(rows: list[NodeRow]) -> tuple[tuple[str, str, bool], ...]:
    """What 'stable' compares: the set of nodes, their status, and whether they have sent data yet."""
    return tuple((r.node, r.status, r.last_seen_age_s is not None) for r in rows)


def collect(client: MonitorClient, opts: MonitorOptions) -> list[NodeRow]:
    """Gather until the picture is stable for ``settle`` seconds, or ``timeout`` passes; then snapshot."""
    start = time.monotonic()
    deadline = start + opts.timeout
    client.subscribed.wait(opts.timeout)
    picture: tuple[tuple[str, str, bool], ...] = ()
    changed = time.monotonic()
    while (now := time.monotonic()) < deadline:
        time.sleep(0.1)
        rows = client.view.snapshot()
        follow(client, opts, len(rows))
        current = _picture(rows)
        if current != picture:
            picture, changed = current, now
        elif picture and now - changed >= opts.settle:
            break
    return client.view.snapshot()


def snapshot_json(rows: list[NodeRow], *, prefix: str, messages: int, elapsed: float) -> str:
    return json.dumps(
        {
            "ts": round(time.time(), 3),
            "prefix": prefix,
            "summary": summarize(rows),
            "messages": messages,
            "collect_s": round(elapsed, 3),
            "nodes": [row.to_dict() for row in rows],
        },
        indent=None,
    )


def run_once(cfg: MqttConfig, opts: MonitorOptions, *, as_json: bool) -> int:
    view = FleetView(opts.prefix, stale_after=opts.stale)
    client = MonitorClient(cfg, view, leaves=opts.leaves)
    start = time.monotonic()
    client.start()
    try:
        rows = collect(client, opts)
    finally:
        client.stop()
    if as_json:
        print(snapshot_json(rows, prefix=opts.prefix, messages=view.messages, elapsed=time.monotonic() - start))
    else:
        from rich.console import Console

        Console().print(render(rows, prefix=opts.prefix))
    return 0


def run_live(cfg: MqttConfig, opts: MonitorOptions) -> int:
    from rich.live import Live

    view = FleetView(opts.prefix, stale_after=opts.stale)
    client = MonitorClient(cfg, view, leaves=opts.leaves)
    client.start()
    last_count, last_time = view.messages, time.monotonic()
    rate: float | None = None
    try:
        with Live(render([], prefix=opts.prefix), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(opts.refresh)
                now = time.monotonic()
                rate = (view.messages - last_count) / (now - last_time)
                last_count, last_time = view.messages, now
                limit = max(5, live.console.height - 6)  # build only what fits the terminal
                rows = view.snapshot()
                follow(client, opts, len(rows))
                live.update(render(rows, prefix=opts.prefix, rate=rate, limit=limit), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        client.stop()
