"""What the node says about itself: the retained state, the heartbeat (on its interval and on ``ping``), and
once, an INT8 file that failed its on-device accuracy check. Payloads come from ``mapping``; topics from the
outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from edge_node.capture.grabber import CameraSnapshot
from edge_node.node.mapping import HeartbeatBuilder, LinkFigures, node_state
from edge_node.node.outbox import Outbox
from edge_node.node.publish_policy import PublishGate
from edge_node.node.supervisor import Health
from edge_node.vision.pipeline import PipelineSnapshot
from edge_node.wire import Event, Heartbeat, WatchState

__all__ = ["LinkCounters", "NodeStatus"]


class LinkCounters(Protocol):
    """The link's figures a heartbeat reports."""

    @property
    def reconnects(self) -> int: ...

    @property
    def dropped_offline(self) -> Mapping[str, int]: ...

    @property
    def denied(self) -> int: ...

    @property
    def offline_s(self) -> float: ...

    @property
    def server(self) -> str | None: ...

    @property
    def failovers(self) -> int: ...


@dataclass
class NodeStatus:
    node_id: str
    outbox: Outbox
    gate: PublishGate
    health: Health
    link: LinkCounters
    pipeline: Callable[[], PipelineSnapshot]
    camera: Callable[[], CameraSnapshot]
    model_source: Callable[[], str]  # "active", "previous" or "factory": the OTA updater knows it once it runs
    watch: Callable[[], WatchState] | None = None  # the watch rules in force, for the retained state
    detections: Callable[[], dict[str, int]] | None = None  # detections started per rule, for heartbeats

    def __post_init__(self) -> None:
        self._beats = HeartbeatBuilder(self.node_id)
        self._choice_announced = False

    def state(self) -> None:
        """The retained state: mode, resolution, model, publish policy, the device choice."""
        st = node_state(self.node_id, self.pipeline(), self.gate.policy, self.gate.max_hz)
        if self.watch is not None:
            st.watch = self.watch()
        self.outbox.state(st)

    def heartbeat(self) -> Heartbeat:
        link = self.link
        hb = self._beats.build(
            pipe=self.pipeline(),
            cam=self.camera(),
            link=LinkFigures(
                link.reconnects, dict(link.dropped_offline), link.denied, link.offline_s, link.server, link.failovers
            ),
            pipeline_state=self.health.pipeline,
            restarts=self.health.restarts,
            model_source=self.model_source(),
        )
        if self.detections is not None:
            hb.detections = self.detections()
        return hb

    def publish_heartbeat(self) -> None:
        self.outbox.heartbeat(self.heartbeat())

    async def heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.publish_heartbeat()

    def announce_choice(self) -> None:
        """Once: an INT8 file that failed its on-device accuracy check, and what serves instead."""
        choice = self.pipeline().choice
        if self._choice_announced or choice is None or choice.note is None:
            return
        self._choice_announced = True
        c = choice.candidate
        failed = [f"{k.runtime} {k.resolution}px {k.agreement:.1%}" for k in choice.checks if not k.passed]
        detail: dict[str, object] = {"serving": f"{c.runtime} {c.precision}", "failed": failed}
        self.outbox.event(Event(cmd="model_check_failed", ok=False, error=choice.note, detail=detail))
