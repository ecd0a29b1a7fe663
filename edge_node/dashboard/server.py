"""The dashboard's HTTP edge (aiohttp): the page, a Server-Sent Events stream, snapshots and commands.

One MQTT client (paho, on its own thread) feeds the :class:`~edge_node.dashboard.board.Board` through an
:class:`~edge_node.dashboard.inbox.Inbox`; every ``push_interval`` the event loop turns what changed into one
JSON batch, encodes it once and queues it for every connected browser. A browser that falls too far behind
is disconnected and, on reconnecting, starts over from a full picture: nothing is skipped silently.

Bounded per browser: a queue of batches (shared bytes), a write timeout (a browser that stops reading is cut
off, its socket reset), a limit on stream connects per address, and ``max_clients`` streams counted until
each handler has returned. The full picture a new browser starts from is built at most once per tick, however
many browsers connect, and encoded in slices that leave the event loop free in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from typing import Any

from aiohttp import web

from edge_node import __version__
from edge_node.config import DashboardConfig, MqttConfig
from edge_node.dashboard.board import STREAMED, Board
from edge_node.dashboard.detections import IDENT, MAX_LIMIT, RULE_NAME, Detections, Query
from edge_node.dashboard.exposure import Exposure, host_name
from edge_node.dashboard.history import RANGES, RecorderHistory, merged
from edge_node.dashboard.inbox import NODE_ID, Inbox
from edge_node.dashboard.limits import RateLimit, client_key
from edge_node.dashboard.security import SECURITY_HEADERS, TokenGate, Verdict, cross_site_reason
from edge_node.dashboard.table import FleetTable
from edge_node.errors import CommandError
from edge_node.fleet.monitor import MonitorClient
from edge_node.mqtt.connect import describe
from edge_node.wire import FLEET, Topics, parse_command

__all__ = ["ASSETS", "Dashboard", "run_dashboard"]

log = logging.getLogger(__name__)

ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
ASSETS |= {"fleet.js": "text/javascript", "fleet.css": "text/css"}  # the table view (dashboard/table.py)
_CLIENT_BACKLOG = 40  # batches queued per browser (10 s at 4 Hz) before it is dropped and must resync
_KEEPALIVE = 15.0
_ACK_TIMEOUT = 5.0
_STREAMED_BACKLOG = 2000  # command results and OTA phases waiting for the next tick
_STREAMED_PER_TICK = 250  # of those, taken into one batch (1000/s at 4 Hz)
_REPORT_EVERY = 60.0  # seconds between two log lines about refused nodes or dropped results
_CARDS_PER_SLICE = 25  # cards encoded between two turns of the event loop (~25 ms at 300 chart points)
_DETECTIONS_PER_TICK = 1000  # detection messages taken into the store per tick (4000/s at 4 Hz)
_DETECTION_LEAVES = ("detections", "detections/snapshot/+")
_ANSWERS_KEPT = 16  # distinct timeline queries kept encoded per store version


def _asset(name: str) -> bytes:
    return (files("edge_node.dashboard") / "static" / name).read_bytes()


# Every JSON the server writes: a NaN or an Infinity raises here instead of reaching a browser, whose
# JSON.parse would throw on it (decode.load refuses them on the way in, so this is the second wall).
_dumps = partial(json.dumps, separators=(",", ":"), allow_nan=False)


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps, headers=headers)


def _error(status: int, message: str, retry_after: float | None = None) -> web.Response:
    headers = None if retry_after is None else {"Retry-After": str(max(1, round(retry_after)))}
    return _json({"error": message}, status, headers)


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _dumps(data).encode() + b"\n\n"


async def _full_frame(picture: dict[str, Any]) -> bytes:
    """The full picture as one frame, encoded _CARDS_PER_SLICE cards at a time with the event loop free in
    between: at 1000 nodes with 300 chart points each it is ~10 MB of JSON and about a second of encoding
    (docs/dashboard.md). A worker thread would not help: the JSON encoder holds the GIL. Nothing in the
    picture changes meanwhile: its containers are fresh, its sections are replaced by the board, not changed."""
    cards = picture.pop("nodes")
    slices = []
    for start in range(0, len(cards), _CARDS_PER_SLICE):
        slices.append(",".join(_dumps(card) for card in cards[start : start + _CARDS_PER_SLICE]))
        await asyncio.sleep(0)
    data = _dumps(picture)[:-1] + ',"nodes":[' + ",".join(slices) + "]}"
    return b"event: full\ndata: " + data.encode() + b"\n\n"


def _reset(request: web.Request) -> None:
    """Drop a connection at once: a reset frees what the kernel still holds for a peer that reads nothing
    (a plain close would keep the unsent data queued behind a zero window)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass(eq=False)  # identity: each browser is its own entry in the set
class _Client:
    queue: asyncio.Queue[bytes | None]
    peer: str


class Dashboard:
    """Owns the board, the MQTT client, the browsers' queues and the push task."""

    def __init__(
        self,
        cfg: DashboardConfig,
        mqtt: MqttConfig,
        prefix: str,
        token: str | None,
        exposure: Exposure,
        history: RecorderHistory | None = None,
    ) -> None:
        self.cfg = cfg
        self.history = history  # the recorder's database, when EDGE_DASHBOARD__HISTORY is on
        self.mqtt_cfg = mqtt
        self.prefix = prefix
        self.exposure = exposure
        self.gate = TokenGate(token, cfg.token_failures_per_minute)
        self.inbox = Inbox(prefix, max_nodes=cfg.max_nodes, backlog=_STREAMED_BACKLOG)
        self.board = Board(prefix, cfg)
        self.detections = Detections(prefix, kept=cfg.detections_kept, thumbnail_bytes=cfg.detection_thumbnail_bytes)
        self._answers: tuple[int, dict[Query, bytes]] = (-1, {})  # timeline answers encoded at a store version
        # A fleet of thousands: heartbeats and state only (EDGE_DASHBOARD__PREDICTIONS=false, or unset and more
        # than EDGE_DASHBOARD__LARGE_FLEET nodes: see follow_predictions), a tenth of the messages
        leaves = ("predictions",) * (cfg.predictions is not False) + ("heartbeat", "status", "state", "snapshot")
        every = dict.fromkeys(STREAMED, self.inbox.stream) | dict.fromkeys(_DETECTION_LEAVES, self.inbox.detection)
        self.mqtt = MonitorClient(mqtt, self.inbox, tool="dashboard", leaves=leaves, every=every)
        self.clients: set[_Client] = set()  # the browsers that get every batch
        self.connections = 0  # stream handlers running: each counts until it has returned
        self._connects = RateLimit(cfg.stream_connects_per_minute)
        self.fulls_built = 0
        self.table = FleetTable(self.board)
        self._full: asyncio.Future[bytes] | None = None  # this tick's full picture, once a browser asked
        self._shown: dict[str, Any] = {}  # broker and limits as last sent
        self._reported: tuple[float, dict[str, int]] = (-_REPORT_EVERY, {})
        self.pushed = 0
        self._page = _asset("index.html")
        self._table_page = _asset("fleet.html")
        self._assets = {name: _asset(name) for name in ASSETS}

    # --- the push loop -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Fold in what arrived and queue one batch for every browser."""
        self._full = None  # out of date from now on (and its memory goes with the last browser it was sent to)
        streamed = self.inbox.take_streamed(_STREAMED_PER_TICK)
        self.follow_predictions()
        delta = self.board.update(self.inbox.take_changed(), streamed, time.monotonic(), time.time())
        self.detections.ingest(self.inbox.take_detections(_DETECTIONS_PER_TICK))
        shown = (("broker", self.broker_status()), ("limits", self.limits()), ("detections", self.detection_mark()))
        for key, value in shown:
            if value != self._shown.get(key):
                self._shown[key] = delta[key] = value
        self._report(self._shown["limits"])
        if not self.clients or (not delta["nodes"] and len(delta) <= 2):
            return  # no browser on the stream (the table polls /api/fleet): nothing to encode
        self.broadcast(_frame("delta", delta))

    def follow_predictions(self) -> None:
        """Unset EDGE_DASHBOARD__PREDICTIONS: stop following predictions once the fleet is large (ten messages
        a second per node at 10 Hz against one heartbeat every 10 s); the table shows heartbeats and state."""
        if self.cfg.predictions is None and "predictions" in self.mqtt.leaves and self.large():
            log.info("%d nodes (more than EDGE_DASHBOARD__LARGE_FLEET): following heartbeats and state, not "
                     "predictions; EDGE_DASHBOARD__PREDICTIONS=true follows them", len(self.board.nodes))  # fmt: skip
            self.mqtt.drop("predictions")

    def detection_mark(self) -> dict[str, int]:
        """What the stream says about detections: only that they changed (the page asks /api/detections for
        what it shows), so a burst of detections costs every browser a few bytes a tick, not the records."""
        return {"version": self.detections.version, "kept": len(self.detections)}

    def large(self) -> bool:
        return len(self.board.nodes) > self.cfg.large_fleet

    def limits(self) -> dict[str, int]:
        """What the caps left out so far; the page says so (a capped dashboard must not look complete)."""
        return {
            "max_nodes": self.cfg.max_nodes,
            "node_messages_ignored": self.inbox.nodes_refused,
            "results_dropped": self.inbox.streamed_dropped,
            "detections_dropped": self.inbox.detections_dropped,
        }

    def _report(self, limits: dict[str, int]) -> None:
        at, last = self._reported
        now = time.monotonic()
        if limits == last or now - at < _REPORT_EVERY:
            return
        self._reported = (now, limits)
        if limits["node_messages_ignored"] > last.get("node_messages_ignored", 0):
            log.warning("ignored %d messages of nodes beyond the first %d (EDGE_DASHBOARD__MAX_NODES) or with ids "
                        "no node can have", limits["node_messages_ignored"], limits["max_nodes"])  # fmt: skip
        if limits["results_dropped"] > last.get("results_dropped", 0):
            log.warning("%d command results/OTA messages arrived faster than shown and were dropped",
                        limits["results_dropped"])  # fmt: skip
        if limits["detections_dropped"] > last.get("detections_dropped", 0):
            log.warning("%d detection messages arrived faster than the timeline could take them and were dropped",
                        limits["detections_dropped"])  # fmt: skip

    def broadcast(self, frame: bytes | None) -> None:
        for client in list(self.clients):
            try:
                client.queue.put_nowait(frame)
            except asyncio.QueueFull:
                log.warning("browser %s fell %d batches behind: disconnecting it (it will resync)", client.peer,
                            _CLIENT_BACKLOG)  # fmt: skip
                self.clients.discard(client)
                with contextlib.suppress(asyncio.QueueEmpty):
                    client.queue.get_nowait()
                client.queue.put_nowait(None)
        self.pushed += 1

    async def push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.push_interval)
            try:
                self.tick()
            except Exception:  # one batch that cannot be built must not end the stream for every browser
                log.exception("could not build a batch for the browsers; trying again at the next tick")

    def full_frame(self) -> asyncio.Future[bytes]:
        """The whole picture for browsers that connect now: taken once per tick (at once, so that it matches
        the batches that follow), then encoded a few cards at a time, shared by every browser of the tick."""
        if self._full is None:
            picture = self.board.full(time.monotonic(), time.time())
            picture |= {"broker": self.broker_status(), "limits": self.limits(), "detections": self.detection_mark()}
            self._full = asyncio.ensure_future(_full_frame(picture))
            self.fulls_built += 1
        return self._full

    def broker_status(self) -> dict[str, Any]:
        return {
            "connected": self.mqtt.connected,
            "error": self.mqtt.last_error,
            "host": self.mqtt.server.rsplit(":", 1)[0],  # the server of the list it is on (or tries next)
            "port": int(self.mqtt.server.rsplit(":", 1)[1]),
        }

    # --- HTTP --------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        @web.middleware
        async def known_hosts(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            """Only the names this dashboard is reached by: a page whose own name was made to resolve here (DNS
            rebinding) still sends that name."""
            host = request.headers.get("Host")
            if not self.exposure.serves(host):
                log.warning("refused %s %s from %s: Host %r is not served", request.method, request.path,
                            request.remote, host)  # fmt: skip
                return _error(421, f"this dashboard does not answer to the name {host_name(host)!r} (a defence "
                              "against DNS rebinding); if you reach it by that name, add it to "
                              "EDGE_DASHBOARD__ALLOWED_HOSTS")  # fmt: skip
            return await handler(request)

        app = web.Application(middlewares=[_headers, known_hosts], client_max_size=64 * 1024)
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.asset)
        app.router.add_get("/fleet", self.table_page)
        app.router.add_get("/api/fleet", self.fleet)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/nodes/{node}/snapshot.jpg", self.snapshot)
        app.router.add_get("/api/nodes/{node}/history", self.node_history)
        app.router.add_get("/api/detections", self.detection_list)
        app.router.add_get("/api/detections/{node}/{ident}.jpg", self.detection_thumbnail)
        app.router.add_post("/api/nodes/{target}/command", self.command)
        return app

    def _token(self, request: web.Request) -> Verdict:
        return self.gate.check(request.headers.get("Authorization"), client_key(request.remote), time.monotonic())

    def _refuse(self, request: web.Request, verdict: Verdict, what: str) -> web.Response:
        if verdict == "blocked":
            wait = self.gate.wait(client_key(request.remote), time.monotonic())
            message = (
                f"too many wrong operator tokens from {request.remote}: every token from there is refused for "
                f"{wait:.0f} s more (EDGE_DASHBOARD__TOKEN_FAILURES_PER_MINUTE)"
            )
            return _error(429, message, wait)
        log.warning("refused %s %s from %s: %s operator token", request.method, request.path, request.remote,
                    "no" if verdict == "missing" else "a wrong")  # fmt: skip
        return _error(401, f"{what} needs the operator token (EDGE_DASHBOARD__TOKEN); enter it on the page")

    async def page(self, request: web.Request) -> web.Response:
        if self.large() and "cards" not in request.query:  # thousands of cards would not be usable
            return web.Response(status=302, headers={"Location": "/fleet"})  # a raise would meet _headers' catch
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def table_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._table_page, content_type="text/html", charset="utf-8")

    async def fleet(self, request: web.Request) -> web.Response:
        """One page of the fleet table (``q``, ``page``, ``size``, ``problems``): what is on screen, no more."""
        if self.exposure.view_needs_token and (verdict := self._token(request)) != "ok":
            return self._refuse(request, verdict, "viewing this dashboard")
        try:
            page, size = int(request.query.get("page", "0")), int(request.query.get("size", "100"))
        except ValueError:
            return _error(400, "page and size must be whole numbers")
        out = self.table.page(
            request.query.get("q", "")[:100],
            page=page,
            size=size,
            problems=request.query.get("problems") in ("1", "true"),
            wall=time.time(),
            now=time.monotonic(),
        )
        out["broker"], out["limits"] = self.broker_status(), self.limits()
        out["predictions"] = "predictions" in self.mqtt.leaves
        return _json(out)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets:
            return _error(404, f"no asset {name!r}")
        return web.Response(body=self._assets[name], content_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    async def config(self, request: web.Request) -> web.Response:
        """What the page needs to know before it connects; never the MQTT credentials. Whether the token it
        holds is right is a token check like any other (and counts when wrong)."""
        verdict = self._token(request) if "Authorization" in request.headers else "missing"
        if verdict == "blocked":
            return self._refuse(request, verdict, "checking a token")
        return _json(
            {
                "version": __version__,
                "prefix": self.prefix,
                "view_requires_token": self.exposure.view_needs_token,
                "stale_after": self.cfg.stale_after,
                "history_seconds": self.cfg.history_seconds,
                "history_ranges": list(RANGES) if self.history is not None else [],  # the recorder's, for charts
                # seconds between refreshes of a range a card shows (only while shown and the page visible)
                "history_refresh_seconds": {
                    name: self.cfg.history_refresh * (1 if name == "1h" else 5) for name in RANGES
                },
                "push_interval": self.cfg.push_interval,
                "token_ok": verdict == "ok",
                "broker": self.broker_status(),
            }
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.exposure.view_needs_token and (verdict := self._token(request)) != "ok":
            return self._refuse(request, verdict, "viewing this dashboard")
        if not self._connects.allow(client_key(request.remote), time.monotonic()):
            log.warning("refused a stream to %s: more than %d connects a minute", request.remote,
                        self.cfg.stream_connects_per_minute)  # fmt: skip
            message = (
                f"more than {self.cfg.stream_connects_per_minute} stream connects a minute from {request.remote} "
                "(EDGE_DASHBOARD__STREAM_CONNECTS_PER_MINUTE); wait a minute"
            )
            return _error(429, message, 60)
        if self.connections >= self.cfg.max_clients:
            return _error(503, f"{self.cfg.max_clients} browsers are already connected (EDGE_DASHBOARD__MAX_CLIENTS)")
        self.connections += 1
        try:
            return await self._serve(request)
        finally:
            self.connections -= 1

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        client = _Client(asyncio.Queue(maxsize=_CLIENT_BACKLOG), request.remote or "?")
        full = self.full_frame()
        self.clients.add(client)  # from here on it gets every batch after the full picture
        try:
            await self._write(request, response.prepare(request))
            frame: bytes | None = await full
            while frame is not None:
                await self._write(request, response.write(frame))
                try:
                    frame = await asyncio.wait_for(client.queue.get(), _KEEPALIVE)
                except TimeoutError:
                    frame = b": keepalive\n\n"
        except ConnectionError:
            pass
        finally:
            self.clients.discard(client)
        return response

    async def _write(self, request: web.Request, write: Awaitable[object]) -> None:
        """One write, bounded in time: a browser that stops reading is cut off, not waited for."""
        try:
            await asyncio.wait_for(write, self.cfg.write_timeout)
        except TimeoutError:
            log.warning("browser %s accepted nothing for %g s: dropping its connection (EDGE_DASHBOARD__WRITE_TIMEOUT)",
                        request.remote, self.cfg.write_timeout)  # fmt: skip
            _reset(request)
            raise ConnectionResetError("write timed out") from None

    async def snapshot(self, request: web.Request) -> web.Response:
        if (verdict := self._token(request)) != "ok":  # a camera image: never without the token
            return self._refuse(request, verdict, "viewing snapshots")
        found = self.board.snapshot(request.match_info["node"])
        if found is None:
            return _error(404, "no snapshot of this node yet: press its snapshot button")
        data, version = found
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Snapshot": str(version)}
        )

    async def node_history(self, request: web.Request) -> web.Response:
        """A node's chart (fps, latency, temperature, RSS; at most POINTS points) and its label counts by hour
        over the last ``range`` (1h, 24h, 7d), from the recorder's database: fetched when a card asks."""
        if self.exposure.view_needs_token and (verdict := self._token(request)) != "ok":
            return self._refuse(request, verdict, "viewing this dashboard")
        node = request.match_info["node"]
        if not NODE_ID.match(node):
            return _error(400, f"{node[:70]!r} is not a node id")
        unknown = sorted(set(request.query) - {"range"})
        if unknown:
            return _error(400, f"unknown parameter {unknown[0][:40]!r}: use range")
        if self.history is None:
            return _error(404, "no recorder history here: the charts show the last minutes this dashboard saw; "
                          "set EDGE_DASHBOARD__HISTORY=true (with the recorder's EDGE_RECORD__*) for 1 h, 24 h "
                          "and 7 days")  # fmt: skip
        range_name = request.query.get("range", "")
        if range_name not in RANGES:
            return _error(400, f"range must be one of {', '.join(RANGES)}, not {range_name[:20]!r}")
        answer = await self.history.node(node, range_name, time.time())
        if answer is None:
            return _error(503, f"the recorder's database did not answer within {self.history.timeout:g} s; try "
                          "again, or a shorter range")  # fmt: skip
        return _json(answer.model_dump())

    async def detection_list(self, request: web.Request) -> web.Response:
        """The timeline: detections this dashboard has seen, newest first, filtered (``node``, ``rule``,
        ``since``, ``until``: seconds since the epoch, ``limit``); open ones say ``"open": true``."""
        if self.exposure.view_needs_token and (verdict := self._token(request)) != "ok":
            return self._refuse(request, verdict, "viewing this dashboard")
        try:
            query = _detection_query(request.query)
        except ValueError as exc:
            return _error(400, str(exc))
        if self.history is None:
            return web.Response(body=self.timeline(query), content_type="application/json")
        past = await self.history.detections(query)  # answers within its timeout, or None
        body = _dumps(merged(self.detections.query(query), past, query.limit)).encode()
        return web.Response(body=body, content_type="application/json")

    def timeline(self, query: Query) -> bytes:
        """The answer to ``query``, encoded once per store version for every browser that asks the same (each
        open page asks again when the stream says detections changed: most ask for the same view)."""
        version, answers = self._answers
        if version != self.detections.version:
            answers = {}
            self._answers = (self.detections.version, answers)
        body = answers.get(query)
        if body is None:
            body = _dumps(self.detections.query(query)).encode()
            if len(answers) < _ANSWERS_KEPT:
                answers[query] = body
        return body

    async def detection_thumbnail(self, request: web.Request) -> web.Response:
        if (verdict := self._token(request)) != "ok":  # a camera image: never without the token
            return self._refuse(request, verdict, "viewing snapshots")
        node, ident = request.match_info["node"], request.match_info["ident"]
        if not NODE_ID.match(node) or not IDENT.match(ident):
            return _error(400, "no such detection: the path is /api/detections/<node>/<id>.jpg")
        data = self.detections.thumbnail(node, ident)
        if data is None:
            return _error(404, f"no snapshot of detection {ident} of {node} here (snapshots are off on that node, "
                          "or it was dropped to stay within EDGE_DASHBOARD__DETECTION_THUMBNAIL_BYTES)")  # fmt: skip
        return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def command(self, request: web.Request) -> web.Response:
        reason = cross_site_reason(request.method, request.headers, request.scheme, request.host)
        if reason is not None:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, reason)
            return _error(403, reason)
        if (verdict := self._token(request)) != "ok":
            return self._refuse(request, verdict, "this action")
        target = request.match_info["target"]
        if target != FLEET and not NODE_ID.match(target):
            return _error(400, f"{target!r} is not a node id")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        body["id"] = f"dash-{secrets.token_hex(6)}"
        try:
            command = parse_command(json.dumps(body).encode())  # validated exactly as the node validates it
        except CommandError as exc:
            return _error(400, str(exc))
        if not self.mqtt.connected:
            return _error(503, f"not connected to the MQTT broker {describe(self.mqtt_cfg)}")
        topic = Topics.control_for(self.prefix, target)
        info = self.mqtt.publish(topic, command.model_dump_json(exclude_none=True).encode(), qos=1)
        with contextlib.suppress(ValueError, RuntimeError):
            await asyncio.to_thread(info.wait_for_publish, _ACK_TIMEOUT)
        if not info.is_published():
            return _error(504, f"the broker did not acknowledge the command within {_ACK_TIMEOUT:g} s")
        log.info("sent %s (id %s) to %s for %s", command.cmd, command.id, topic, request.remote)
        return _json({"id": command.id, "cmd": command.cmd, "target": target}, 202)


def _detection_query(params: Mapping[str, str]) -> Query:
    """The timeline's query parameters, checked; ValueError says which one is wrong and what it must be."""
    unknown = sorted(set(params) - {"node", "rule", "since", "until", "limit"})
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0][:40]!r}: use node, rule, since, until and limit")
    node, rule = params.get("node") or None, params.get("rule") or None
    if node is not None and not NODE_ID.match(node):
        raise ValueError("node must be a node id (letters, digits, '_', '.', '-'; at most 64 characters)")
    if rule is not None and not RULE_NAME.match(rule):
        raise ValueError("rule must be a watch rule's name (letters, digits, '_', '.', '-'; at most 64 characters)")
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        text = params.get(name) or None
        try:
            value = None if text is None else float(text)
        except ValueError:
            value = math.nan
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a time in seconds since the epoch, such as 1796279628.9")
        times[name] = value
    since, until = times["since"], times["until"]
    if since is not None and until is not None and since > until:
        raise ValueError("since must not be later than until")
    try:
        limit = int(params.get("limit") or 100)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return Query(node=node, rule=rule, since=since, until=until, limit=limit)


@web.middleware
async def _headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Security headers on every answer, errors included; nothing under /api is cached."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = _error(exc.status, exc.reason)
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def run_dashboard(
    dashboard: Dashboard,
    *,
    bind: str,
    port: int,
    ready: Callable[[str], None],
    stop: asyncio.Event,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until ``stop`` is set; ``ready`` gets the URL once the port is open."""
    if dashboard.history is not None:
        await dashboard.history.start()  # a missing history database stops the start here, saying what to do
    dashboard.mqtt.start_background()
    runner = web.AppRunner(dashboard.app(), handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, bind, port, ssl_context=tls)
        await site.start()
        address = runner.addresses[0]
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        ready(f"{'https' if tls else 'http'}://{host}:{address[1]}/")
        pusher = asyncio.create_task(dashboard.push_loop(), name="push")
        await stop.wait()
        pusher.cancel()
        dashboard.broadcast(None)  # end every stream, so the runner need not wait for them
    finally:
        await runner.cleanup()
        await asyncio.to_thread(dashboard.mqtt.stop)
        if dashboard.history is not None:
            await dashboard.history.close()
