"""The dashboard's fleet state and the batched changes pushed to browsers. Pure: time is passed in.

The MQTT thread only stores the newest raw payload per topic and queues command results and OTA phases
(:class:`~edge_node.dashboard.inbox.Inbox`, which also bounds nodes and payload sizes). A few times per
second :meth:`Board.update` compares each stored payload with the one it saw last (identity, not content: no
work for unchanged topics), decodes only what changed, samples the charts, re-derives online/stale/offline,
and returns one delta holding only the nodes that changed. A browser that connects gets :meth:`Board.full`
once, then the deltas. Every part of a card is bounded: chart points, command results, the OTA trail, one
snapshot, and what decoding keeps of each payload.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edge_node.config import DashboardConfig
from edge_node.dashboard.inbox import Message, Refused
from edge_node.fleet import decode
from edge_node.fleet.decode import JsonDict
from edge_node.wire import OFFLINE, ONLINE, Topics

__all__ = ["STREAMED", "Board"]

STREAMED = ("events", "ota")  # leaves whose every message matters, not just the newest
# Staleness, chart points and the summary need a pass over every node: each update in a fleet this small, at
# most once a second in a larger one (10,000 nodes at 4 updates a second cost ~40 % of a core); nodes whose
# messages arrived are always looked at in their update.
SWEEP_EVERY_UPDATE_UP_TO = 1000
SWEEP_EVERY = 1.0


@dataclass
class _Node:
    node: str
    first_seen: float
    history: deque[list[float | None]]
    events: deque[JsonDict]
    sections: dict[str, JsonDict] = field(default_factory=dict)
    raw: dict[str, object] = field(default_factory=dict)  # leaf -> the payload object decoded last
    at: dict[str, float] = field(default_factory=dict)  # leaf -> monotonic arrival time
    status: str = "unknown"  # from the retained status topic
    shown: str = ""  # what the page shows: online, stale, offline or unknown
    ota_trail: list[str] = field(default_factory=list)  # phases of the latest update, in order
    snapshot: bytes | None = None
    snapshot_at: float | None = None
    snapshot_version: int = 0
    bad_payloads: int = 0
    sampled_at: float = -math.inf
    sample_source: float = -math.inf  # arrival time of the message the last chart point came from


class Board:
    """Everything the page shows, kept per node and bounded (charts, events, one snapshot per node)."""

    def __init__(self, prefix: str, cfg: DashboardConfig) -> None:
        self.prefix = prefix
        self.cfg = cfg
        self.points = max(2, int(cfg.history_seconds / cfg.history_interval))
        self.nodes: dict[str, _Node] = {}
        self._parsed: dict[str, tuple[str, str] | None] = {}
        self._summary: JsonDict | None = None
        self._swept_at = -math.inf

    # --- ingest ------------------------------------------------------------------------------------------

    def _leaf(self, topic: str) -> tuple[str, str] | None:
        hit = self._parsed.get(topic, False)
        if hit is False:
            hit = self._parsed[topic] = Topics.parse(self.prefix, topic)
        return hit  # type: ignore[return-value]

    def _node(self, name: str, now: float) -> _Node:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = _Node(name, now, deque(maxlen=self.points), deque(maxlen=self.cfg.events_kept))
        return node

    def update(self, latest: Iterable[Message], streamed: Iterable[Message], now: float, wall: float) -> JsonDict:
        """Take what arrived since the last call; return the delta (``nodes`` may be empty)."""
        changed: dict[str, JsonDict] = {}
        touched: list[_Node] = []  # nodes with a new latest-wins payload

        def delta(node: _Node) -> JsonDict:
            return changed.setdefault(node.node, {"node": node.node})

        for topic, raw, at in latest:
            parsed = self._leaf(topic)
            if parsed is None:
                continue
            name, leaf = parsed
            node = self.nodes.get(name)
            if node is not None and node.raw.get(leaf) is raw:
                continue  # the same payload object as last time: nothing new
            if leaf not in decode.SECTIONS and leaf not in ("status", "snapshot"):
                continue
            node = node or self._node(name, now)
            node.raw[leaf] = raw
            touched.append(node)
            if isinstance(raw, Refused):  # too large to keep: the last good one stays
                self._bad(node, delta(node))
                continue
            node.at[leaf] = at
            if leaf == "status":
                node.status = {ONLINE: "online", OFFLINE: "offline"}.get(bytes(raw).strip().lower(), "unknown")
            elif leaf == "snapshot":
                node.snapshot, node.snapshot_at = bytes(raw), _wall(at, now, wall)
                node.snapshot_version += 1
                delta(node)["snapshot"] = self._snapshot_info(node)
            else:
                data = decode.load(raw)
                if data is None:
                    self._bad(node, delta(node))
                    continue
                node.sections[leaf] = section = decode.SECTIONS[leaf](data)
                delta(node)[leaf] = section
                delta(node).setdefault("seen", {})[leaf] = _wall(at, now, wall)

        for topic, raw, _at in streamed:
            parsed = self._leaf(topic)
            if parsed is None or parsed[1] not in STREAMED:
                continue
            node = self._node(parsed[0], now)
            data = decode.load(raw)
            if data is None:
                self._bad(node, delta(node))
                continue
            if parsed[1] == "events":
                entry = decode.event(data)
                node.events.append(entry)
                delta(node).setdefault("events", []).append(entry)  # every one: the page matches pending ids
            elif parsed[1] == "ota":
                phase = decode.ota(data)
                previous = node.sections.get("ota", {})
                if phase.get("id") != previous.get("id") or not node.ota_trail:
                    node.ota_trail = []
                step = phase.get("phase", "?")
                if not node.ota_trail or node.ota_trail[-1] != step:
                    node.ota_trail = [*node.ota_trail, step][-12:]
                node.sections["ota"] = phase | {"trail": node.ota_trail}
                delta(node)["ota"] = node.sections["ota"]

        sweep = len(self.nodes) <= SWEEP_EVERY_UPDATE_UP_TO or now - self._swept_at >= SWEEP_EVERY
        if sweep:
            self._swept_at = now
        for node in self.nodes.values() if sweep else touched:
            status = self._status(node, now)
            if status != node.shown:
                node.shown = delta(node)["status"] = status
            point = self._sample(node, now, wall)
            if point is not None:
                delta(node)["history"] = [point]

        out: JsonDict = {"ts": round(wall, 3), "nodes": list(changed.values())}
        summary = self.summary() if sweep else self._summary
        if summary != self._summary:
            self._summary = out["summary"] = summary
        return out

    @staticmethod
    def _bad(node: _Node, delta: JsonDict) -> None:
        node.bad_payloads += 1
        delta["bad_payloads"] = node.bad_payloads

    # --- derived -----------------------------------------------------------------------------------------

    def _status(self, node: _Node, now: float) -> str:
        """offline / unknown from the retained status; online turns stale when nothing fresh arrives."""
        if node.status != "online":
            return node.status
        fresh = [node.at[leaf] for leaf in ("heartbeat", "predictions") if leaf in node.at]
        since = max(fresh) if fresh else max(node.first_seen, node.at.get("status", node.first_seen))
        return "stale" if now - since > self.cfg.stale_after else "online"

    def _sample(self, node: _Node, now: float, wall: float) -> list[float | None] | None:
        """One chart point per history_interval, from the newest prediction (or heartbeat) since the last."""
        if now - node.sampled_at < self.cfg.history_interval:
            return None
        pred, beat = node.sections.get("predictions"), node.sections.get("heartbeat")
        pred_at, beat_at = node.at.get("predictions", -math.inf), node.at.get("heartbeat", -math.inf)
        if max(pred_at, beat_at) <= node.sample_source:
            return None  # nothing new: a gap in the chart rather than a repeated point
        if pred is not None and pred_at >= beat_at - self.cfg.history_interval:
            fps, inference, source = pred.get("fps"), pred.get("latency", {}).get("inference"), pred_at
        elif beat is not None:
            fps, inference, source = beat.get("fps"), beat.get("inference_ms_avg"), beat_at
        else:
            return None
        node.sampled_at, node.sample_source = now, source
        point = [round(wall, 1), _round(fps), _round(inference)]
        node.history.append(point)
        return point

    def summary(self) -> JsonDict:
        counts = Counter(node.shown or node.status for node in self.nodes.values())
        versions: Counter[str] = Counter()
        for node in self.nodes.values():
            if node.status == "offline":
                continue
            version = _model_version(node)
            versions[version or "unknown"] += 1
        return {
            "total": len(self.nodes),
            "online": counts["online"],
            "stale": counts["stale"],
            "offline": counts["offline"],
            "unknown": counts["unknown"],
            "versions": dict(sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))),
        }

    def _snapshot_info(self, node: _Node) -> JsonDict | None:
        if node.snapshot is None:
            return None
        return {"version": node.snapshot_version, "bytes": len(node.snapshot), "at": node.snapshot_at}

    def full(self, now: float, wall: float) -> JsonDict:
        """The whole picture for a browser that just connected."""
        nodes = []
        for node in sorted(self.nodes.values(), key=lambda n: n.node):
            card: JsonDict = {"node": node.node, "status": node.shown or node.status}
            for leaf in ("predictions", "heartbeat", "state", "ota"):
                if leaf in node.sections:
                    card[leaf] = node.sections[leaf]
            card["seen"] = {leaf: _wall(node.at[leaf], now, wall) for leaf in decode.SECTIONS if leaf in node.at}
            card["events"] = list(node.events)
            card["history"] = list(node.history)
            card["snapshot"] = self._snapshot_info(node)
            card["bad_payloads"] = node.bad_payloads
            nodes.append(card)
        return {"ts": round(wall, 3), "nodes": nodes, "summary": self.summary()}

    def snapshot(self, name: str) -> tuple[bytes, int] | None:
        node = self.nodes.get(name)
        if node is None or node.snapshot is None:
            return None
        return node.snapshot, node.snapshot_version


def _model_version(node: _Node) -> str | None:
    for leaf in ("predictions", "state"):
        version = node.sections.get(leaf, {}).get("model", {}).get("version")
        if version:
            return str(version)
    beat = node.sections.get("heartbeat", {}).get("model_version")
    return str(beat) if beat else None


def _wall(at: float, now: float, wall: float) -> float:
    """A monotonic arrival time as wall-clock seconds (the browser shows ages from it)."""
    return round(wall - (now - at), 3)


def _round(value: Any) -> float | None:
    return round(float(value), 2) if isinstance(value, int | float) and not isinstance(value, bool) else None
