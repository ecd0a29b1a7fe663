"""Control messages in, exactly one event out for each (or a drop by the documented rate limit).

Each command topic has its router (``routes``), which turns bytes into a Command or an error Event (size cap,
token bucket, strict validation): the control topics take every command, Home Assistant's mode topic only a
mode, which becomes the very same ``set_mode``. This module refuses replays (a retained command is delivered
again on every reconnect and restart, so it is never executed) and runs the rest. Long commands (model
updates) are handed to the OTA updater, which answers with its own event when they end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from edge_node.capture.base import Frame
from edge_node.config import MqttConfig, SnapshotConfig
from edge_node.errors import SnapshotError
from edge_node.mqtt import ControlRouter
from edge_node.node.jpeg import Jpeg, take_snapshot
from edge_node.node.publish_policy import PublishGate
from edge_node.wire import (
    Command,
    Event,
    Mode,
    Ping,
    Rollback,
    SetMode,
    SetPublish,
    SetWatch,
    Snapshot,
    Topics,
    UpdateModel,
    WatchRule,
    parse_mode_select,
)

__all__ = ["CommandHandler", "Snapshots", "Updates", "command_routes"]

log = logging.getLogger(__name__)


class Updates(Protocol):
    """What commands need from the OTA updater."""

    def submit(self, cmd: UpdateModel | Rollback) -> None: ...


def command_routes(cfg: MqttConfig, topics: Topics, *, ha: bool) -> dict[str, ControlRouter]:
    """The topics the node takes commands on, each with its router. Home Assistant gets a topic of its own
    that carries only a mode (never ``all``), so its identity cannot send any other command (docs/security.md)."""
    control = ControlRouter(max_bytes=cfg.max_control_bytes, rate=cfg.control_rate)
    routes = dict.fromkeys(topics.subscriptions, control)  # the node's own control topic and the fleet's
    if ha:
        routes[topics.ha_mode] = ControlRouter(
            max_bytes=cfg.max_control_bytes, rate=cfg.control_rate, parse=parse_mode_select
        )
    return routes


@dataclass(frozen=True)
class Snapshots:
    """The ``snapshot`` command's JPEG: the latest frame, captioned with the latest result (``jpeg.py``)."""

    cfg: SnapshotConfig
    frame: Callable[[], Frame | None]
    caption: Callable[[], tuple[str | None, float | None]]
    camera: Callable[[], str]

    async def take(self) -> Jpeg:
        """Encoded off the loop; refused (SnapshotError) unless enabled. No frame is touched when disabled."""
        frame = self.frame() if self.cfg.enabled else None
        label, confidence = self.caption()
        return await asyncio.to_thread(take_snapshot, self.cfg, frame, label, confidence, self.camera())


@dataclass
class CommandHandler:
    routes: Mapping[str, ControlRouter]  # command topic → the router that parses and rate-limits what it carries
    gate: PublishGate
    set_mode: Callable[[Mode], int]
    emit: Callable[[Event], None]
    publish_state: Callable[[], None]
    publish_heartbeat: Callable[[], None]
    updates: Updates | None
    take_snapshot: Callable[[], Awaitable[Jpeg]]
    publish_snapshot: Callable[[bytes], None]
    set_watch: Callable[[list[WatchRule]], dict[str, object]] | None = None  # the node's watcher (docs/detections.md)

    def accepts(self, topic: str) -> bool:
        return topic in self.routes

    async def handle(self, topic: str, payload: bytes, *, retained: bool, now: float) -> None:
        routed = self.routes[topic].route(payload, now)
        if routed is None:
            log.warning("control message on %s dropped: rate limit exceeded", topic)
            return
        if isinstance(routed, Event):
            log.warning("rejected control message on %s: %s", topic, routed.error)
            self.emit(routed)
            return
        if retained:
            log.warning("retained %s command on %s not executed", routed.cmd, topic)
            self.emit(
                Event(
                    id=routed.id,
                    cmd=routed.cmd,
                    ok=False,
                    error=f"retained control messages are never executed (they would run again on every reconnect); "
                    f"clear it with: mosquitto_pub -r -n -t {topic}  and send the command without the retain flag",
                )
            )
            return
        await self.execute(routed)

    async def execute(self, cmd: Command) -> None:
        log.info("command %s (id=%s)", cmd.cmd, cmd.id)
        if isinstance(cmd, SetMode):
            resolution = self.set_mode(cmd.mode)
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail={"mode": cmd.mode.value, "resolution": resolution}))
            self.publish_state()
        elif isinstance(cmd, Ping):
            self.publish_heartbeat()
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True))
        elif isinstance(cmd, SetPublish):
            self.gate.configure(cmd.policy, cmd.max_hz)
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail={"policy": cmd.policy.value}))
            self.publish_state()
        elif isinstance(cmd, UpdateModel | Rollback):
            if self.updates is None:
                self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error="over-the-air updates are not available"))
                return
            self.updates.submit(cmd)
        elif isinstance(cmd, SetWatch):
            if self.set_watch is None:
                self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error="this node does not run watch rules"))
                return
            detail = self.set_watch(cmd.rules)
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail=detail))
            self.publish_state()
        elif isinstance(cmd, Snapshot):
            try:
                jpeg = await self.take_snapshot()
            except SnapshotError as exc:
                self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error=str(exc)))
                return
            self.publish_snapshot(jpeg.data)  # before the event: "answered" means "sent"
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail=jpeg.detail()))
