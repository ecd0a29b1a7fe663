"""The monitor's model of the fleet: cheap ingest, decoding at snapshot time.

``ingest`` is called for every MQTT message, so it only stores the newest raw payload per topic with its
arrival time. ``snapshot`` (a few times per second at most) groups topics by node and decodes one payload
per node and leaf with the wire models. A fleet of hundreds of nodes at 10 Hz costs a dict store each.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from edge_node.messages import OFFLINE, ONLINE, Event, Heartbeat, NodeState, Prediction
from edge_node.topics import Topics

__all__ = ["LEAVES", "FleetView", "NodeRow", "Status"]

LEAVES = ("predictions", "heartbeat", "status", "state", "events")

Status = Literal["online", "offline", "unknown"]
_STATUS: dict[bytes, Status] = {ONLINE: "online", OFFLINE: "offline"}


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as the dashboard and ``--json`` show it; ages are seconds since the monitor received it."""

    node: str
    status: Status
    online: bool
    stale: bool
    label: str | None = None
    confidence: float | None = None
    fps: float | None = None
    inference_ms: float | None = None
    mode: str | None = None
    resolution: int | None = None
    model_version: str | None = None
    camera: str | None = None
    pipeline: str | None = None
    denied: int = 0  # publishes the broker refused (the node's heartbeat; MQTT 5 only)
    dropped_offline: int = 0
    cpu_temp_c: float | None = None
    heartbeat_age_s: float | None = None
    prediction_age_s: float | None = None
    last_seen_age_s: float | None = None
    last_event: str | None = None
    bad_payloads: int = 0
    server: str | None = None  # the MQTT server the node is on (its heartbeat)
    failovers: int = 0

    @property
    def troubled(self) -> bool:
        """Online but not well: camera or pipeline not ok, or the broker refusing its publishes."""
        return self.camera not in (None, "ok") or self.pipeline not in (None, "ok") or self.denied > 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


M = TypeVar("M", bound=BaseModel)


def _decode(model: type[M], raw: bytes | bytearray | None) -> M | None:
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None


class FleetView:
    """Latest raw payload per topic, turned into :class:`NodeRow` objects on demand."""

    def __init__(self, prefix: str, *, stale_after: float = 30.0) -> None:
        self.prefix = prefix
        self.stale_after = stale_after
        self.messages = 0
        self._latest: dict[str, tuple[bytes | bytearray, float]] = {}
        self._decoded: dict[int, tuple[bytes | bytearray, BaseModel | None]] = {}  # id(raw) -> decoded

    def ingest(self, topic: str, payload: bytes | bytearray, now: float | None = None) -> None:
        """The hot path: one dict store and a counter."""
        self._latest[topic] = (payload, time.monotonic() if now is None else now)
        self.messages += 1

    def entries(self) -> list[tuple[str, bytes | bytearray, float]]:
        """Every stored topic with its newest payload and arrival time; a copy, safe against the ingest thread."""
        return [(topic, raw, at) for topic, (raw, at) in list(self._latest.items())]

    def node_ids(self) -> set[str]:
        nodes = set()
        for topic in list(self._latest):
            parsed = Topics.parse(self.prefix, topic)
            if parsed is not None and parsed[1] in LEAVES:
                nodes.add(parsed[0])
        return nodes

    def snapshot(self, now: float | None = None) -> list[NodeRow]:
        """Rows sorted with problems first (offline, then stale, then unhealthy), then by node id."""
        current = time.monotonic() if now is None else now
        per_node: dict[str, dict[str, tuple[bytes | bytearray, float]]] = {}
        for topic, entry in list(self._latest.items()):
            parsed = Topics.parse(self.prefix, topic)
            if parsed is not None and parsed[1] in LEAVES:
                per_node.setdefault(parsed[0], {})[parsed[1]] = entry
        live = {id(raw) for raw, _ in self._latest.values()}
        self._decoded = {key: hit for key, hit in self._decoded.items() if key in live}  # forget replaced payloads
        rows = [self._row(node, leaves, current) for node, leaves in per_node.items()]
        rows.sort(key=lambda r: (r.online, not r.stale, not r.troubled, r.node))
        return rows

    def _cached(self, model: type[M], raw: bytes | bytearray | None) -> M | None:
        """Decode once per payload object: heartbeats, states and events mostly repeat between snapshots."""
        if raw is None:
            return None
        hit = self._decoded.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1] if isinstance(hit[1], model) else None
        decoded = _decode(model, raw)
        self._decoded[id(raw)] = (raw, decoded)
        return decoded

    def _row(self, node: str, leaves: dict[str, tuple[bytes | bytearray, float]], now: float) -> NodeRow:
        def raw(leaf: str) -> bytes | bytearray | None:
            entry = leaves.get(leaf)
            return entry[0] if entry else None

        def age(leaf: str) -> float | None:
            entry = leaves.get(leaf)
            return round(max(0.0, now - entry[1]), 3) if entry else None

        status_raw = (raw("status") or b"").strip().lower()
        status: Status = _STATUS.get(bytes(status_raw), "unknown")
        pred = self._cached(Prediction, raw("predictions"))
        beat = self._cached(Heartbeat, raw("heartbeat"))
        state = self._cached(NodeState, raw("state"))
        event = self._cached(Event, raw("events"))
        bad = sum(
            1
            for leaf, decoded in (
                ("predictions", pred),
                ("heartbeat", beat),
                ("state", state),
                ("events", event),
            )
            if leaf in leaves and decoded is None
        )
        beat_age, pred_age = age("heartbeat"), age("predictions")
        last_seen = min((max(0.0, now - t) for leaf, (_, t) in leaves.items() if leaf != "status"), default=None)
        # retained status says online, but nothing fresh arrived: the node may be hung without dropping MQTT
        fresh = [a for a in (beat_age, pred_age) if a is not None]
        stale = status == "online" and (not fresh or min(fresh) > self.stale_after)
        # mode and resolution from whichever message carrying them arrived last
        candidates = [
            (leaves[leaf][1], (msg.mode.value, msg.resolution))
            for leaf, msg in (("predictions", pred), ("state", state), ("heartbeat", beat))
            if msg is not None
        ]
        settings = max(candidates)[1] if candidates else None
        return NodeRow(
            node=node,
            status=status,
            online=status == "online",
            stale=stale,
            label=pred.label if pred else None,
            confidence=pred.confidence if pred else None,
            fps=pred.fps if pred else beat.fps if beat else None,
            inference_ms=pred.latency_ms.inference if pred else beat.inference_ms_avg if beat else None,
            mode=settings[0] if settings else None,
            resolution=settings[1] if settings else None,
            model_version=pred.model.version if pred else state.model.version if state else None,
            camera=beat.camera if beat else None,
            pipeline=beat.pipeline if beat else None,
            denied=beat.publish_denied if beat else 0,
            dropped_offline=sum(beat.dropped_offline.values()) if beat else 0,
            cpu_temp_c=beat.cpu_temp_c if beat else None,
            heartbeat_age_s=beat_age,
            prediction_age_s=pred_age,
            last_seen_age_s=round(last_seen, 3) if last_seen is not None else None,
            last_event=_describe(event) if event else None,
            bad_payloads=bad,
            server=beat.server if beat else None,
            failovers=beat.failovers if beat else 0,
        )


def _describe(event: Event) -> str:
    return f"{event.cmd}: ok" if event.ok else f"{event.cmd}: {event.error or 'failed'}"
