"""The dashboard's HTTP edge (aiohttp): the page, a Server-Sent Events stream, snapshots and commands.

One MQTT client (paho, on its own thread) feeds the :class:`~edge_node.dashboard.board.Board` through a
:class:`~edge_node.fleet.view.FleetView`; every ``push_interval`` the event loop turns what changed into one
JSON batch, encodes it once and queues it for every connected browser. A browser that falls too far behind
is disconnected and, on reconnecting, starts over from a full picture: nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from typing import Any

from aiohttp import web

from edge_node import __version__
from edge_node.config import DashboardConfig, MqttConfig
from edge_node.dashboard.board import STREAMED, Board, Message
from edge_node.dashboard.security import SECURITY_HEADERS, cross_site_reason, token_ok
from edge_node.errors import CommandError
from edge_node.fleet.monitor import MonitorClient
from edge_node.fleet.view import FleetView
from edge_node.messages import parse_command
from edge_node.mqtt.connect import broker_host
from edge_node.topics import FLEET, Topics

__all__ = ["ASSETS", "Dashboard", "run_dashboard"]

log = logging.getLogger(__name__)

ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CLIENT_BACKLOG = 40  # batches queued per browser (10 s at 4 Hz) before it is dropped and must resync
_KEEPALIVE = 15.0
_ACK_TIMEOUT = 5.0
_MAX_STREAMED = 20_000


def _asset(name: str) -> bytes:
    return (files("edge_node.dashboard") / "static" / name).read_bytes()


# Every JSON the server writes: a NaN or an Infinity raises here instead of reaching a browser, whose
# JSON.parse would throw on it (decode.load refuses them on the way in, so this is the second wall).
_dumps = partial(json.dumps, separators=(",", ":"), allow_nan=False)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _dumps(data).encode() + b"\n\n"


@dataclass(eq=False)  # identity: each browser is its own entry in the set
class _Client:
    queue: asyncio.Queue[bytes | None]
    peer: str


class Dashboard:
    """Owns the board, the MQTT client, the browsers' queues and the push task."""

    def __init__(self, cfg: DashboardConfig, mqtt: MqttConfig, prefix: str, token: str | None) -> None:
        self.cfg = cfg
        self.mqtt_cfg = mqtt
        self.prefix = prefix
        self.token = token
        self.view = FleetView(prefix)
        self.board = Board(prefix, cfg)
        self._streamed: deque[Message] = deque(maxlen=_MAX_STREAMED)
        self._streamed_in = 0  # written by the MQTT thread only
        self._streamed_out = 0
        self.mqtt = MonitorClient(
            mqtt, self.view, tool="dashboard", leaves=("predictions", "heartbeat", "status", "state", "snapshot"),
            every={leaf: self._on_streamed for leaf in STREAMED},
        )  # fmt: skip
        self.clients: set[_Client] = set()
        self._broker: dict[str, Any] = {}
        self.pushed = 0
        self._page = _asset("index.html")
        self._assets = {name: _asset(name) for name in ASSETS}

    # --- MQTT thread -------------------------------------------------------------------------------------

    def _on_streamed(self, topic: str, payload: bytes | bytearray) -> None:
        self._streamed.append((topic, payload, time.monotonic()))
        self._streamed_in += 1

    # --- the push loop -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Fold in what arrived and queue one batch for every browser."""
        streamed = []
        while self._streamed:
            streamed.append(self._streamed.popleft())
        self._streamed_out += len(streamed)
        if (lost := self._streamed_in - self._streamed_out) > self.board.dropped_events:
            log.warning("%d command results/OTA messages arrived faster than shown and were dropped", lost)
            self.board.drop_events(lost - self.board.dropped_events)
        delta = self.board.update(self.view.entries(), streamed, time.monotonic(), time.time())
        broker = self.broker_status()
        if broker != self._broker:
            self._broker = delta["broker"] = broker
        if not delta["nodes"] and len(delta) <= 2:
            return
        self.broadcast(_frame("delta", delta))

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

    def broker_status(self) -> dict[str, Any]:
        return {
            "connected": self.mqtt.connected,
            "error": self.mqtt.last_error,
            "host": broker_host(self.mqtt_cfg),
            "port": self.mqtt_cfg.port,
        }

    # --- HTTP --------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.asset)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/nodes/{node}/snapshot.jpg", self.snapshot)
        app.router.add_post("/api/nodes/{target}/command", self.command)
        return app

    def _may_view(self, request: web.Request) -> bool:
        return not self.cfg.view_requires_token or token_ok(self.token, request.headers.get("Authorization"))

    def _refuse(self, request: web.Request, what: str) -> web.Response:
        log.warning("refused %s %s from %s: no valid operator token", request.method, request.path, request.remote)
        return _error(401, f"{what} needs the operator token (EDGE_DASHBOARD__TOKEN); enter it on the page")

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets:
            return _error(404, f"no asset {name!r}")
        return web.Response(body=self._assets[name], content_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    async def config(self, request: web.Request) -> web.Response:
        """What the page needs to know before it connects; never the MQTT credentials."""
        return _json(
            {
                "version": __version__,
                "prefix": self.prefix,
                "view_requires_token": self.cfg.view_requires_token,
                "stale_after": self.cfg.stale_after,
                "history_seconds": self.cfg.history_seconds,
                "push_interval": self.cfg.push_interval,
                "token_ok": token_ok(self.token, request.headers.get("Authorization")),
                "broker": self.broker_status(),
            }
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if not self._may_view(request):
            return self._refuse(request, "viewing this dashboard")
        if len(self.clients) >= self.cfg.max_clients:
            return _error(503, f"{self.cfg.max_clients} browsers are already connected (EDGE_DASHBOARD__MAX_CLIENTS)")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        client = _Client(asyncio.Queue(maxsize=_CLIENT_BACKLOG), request.remote or "?")
        first = self.board.full(time.monotonic(), time.time()) | {"broker": self.broker_status()}
        self.clients.add(client)  # from here on it gets every batch after the full picture
        try:
            await response.write(_frame("full", first))
            while True:
                try:
                    frame = await asyncio.wait_for(client.queue.get(), _KEEPALIVE)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                if frame is None:
                    break
                await response.write(frame)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.clients.discard(client)
        return response

    async def snapshot(self, request: web.Request) -> web.Response:
        if not self._may_view(request):
            return self._refuse(request, "viewing snapshots")
        found = self.board.snapshot(request.match_info["node"])
        if found is None:
            return _error(404, "no snapshot of this node yet: press its snapshot button")
        data, version = found
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Snapshot": str(version)}
        )

    async def command(self, request: web.Request) -> web.Response:
        reason = cross_site_reason(request.method, request.headers, request.scheme, request.host)
        if reason is not None:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, reason)
            return _error(403, reason)
        if not token_ok(self.token, request.headers.get("Authorization")):
            return self._refuse(request, "this action")
        target = request.match_info["target"]
        if target != FLEET and not _NODE.match(target):
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
            return _error(503, f"not connected to the MQTT broker {broker_host(self.mqtt_cfg)}:{self.mqtt_cfg.port}")
        topic = Topics.control_for(self.prefix, target)
        info = self.mqtt.publish(topic, command.model_dump_json(exclude_none=True).encode(), qos=1)
        with contextlib.suppress(ValueError, RuntimeError):
            await asyncio.to_thread(info.wait_for_publish, _ACK_TIMEOUT)
        if not info.is_published():
            return _error(504, f"the broker did not acknowledge the command within {_ACK_TIMEOUT:g} s")
        log.info("sent %s (id %s) to %s for %s", command.cmd, command.id, topic, request.remote)
        return _json({"id": command.id, "cmd": command.cmd, "target": target}, 202)


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
    dashboard: Dashboard, *, bind: str, port: int, ready: Callable[[str], None], stop: asyncio.Event
) -> None:
    """Serve until ``stop`` is set; ``ready`` gets the URL once the port is open."""
    dashboard.mqtt.start_background()
    runner = web.AppRunner(dashboard.app(), handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, bind, port)
        await site.start()
        address = runner.addresses[0]
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        ready(f"http://{host}:{address[1]}/")
        pusher = asyncio.create_task(dashboard.push_loop(), name="push")
        await stop.wait()
        pusher.cancel()
        dashboard.broadcast(None)  # end every stream, so the runner need not wait for them
    finally:
        await runner.cleanup()
        await asyncio.to_thread(dashboard.mqtt.stop)
