"""The monitor's model of the fleet: cheap ingest, decoding at snapshot time.

``ingest`` is called for every MQTT message, so it only stores the newest raw payload per topic with its
arrival time. ``snapshot`` (a few times per second at most) groups topics by node and decodes one payload
per node and leaf with the viewers' lenient decoder (:mod:`edge_node.fleet.decode`, the web dashboard's too):
a newer node's extra fields are read past, and only what is no JSON object with finite numbers counts as a
bad payload. A fleet of hundreds of nodes at 10 Hz costs a dict store each.

Two threads meet here: paho's network thread writes through ``ingest`` while the monitor's or dashboard's
thread reads. The store has one owner, this object, and one lock; a reader takes one copy under the lock
and works on that copy only, so no reader ever iterates the live dict (CI once saw "dictionary changed size
during iteration" from a reader that did).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Literal

from edge_node.fleet import decode
from edge_node.fleet.decode import JsonDict
from edge_node.wire import OFFLINE, ONLINE, Topics

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


_LEAF_DECODERS = {**decode.SECTIONS, "events": decode.event}


class FleetView:
    """Latest raw payload per topic, turned into :class:`NodeRow` objects on demand."""

    def __init__(self, prefix: str, *, stale_after: float = 30.0) -> None:
        self.prefix = prefix
        self.stale_after = stale_after
        self.messages = 0
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[bytes | bytearray, float]] = {}  # guarded by _lock
        # (leaf, id(raw)) -> (raw, decoded): one payload object may sit under two leaves, decoded each its way
        self._decoded: dict[tuple[str, int], tuple[bytes | bytearray, JsonDict | None]] = {}

    def ingest(self, topic: str, payload: bytes | bytearray, now: float | None = None) -> None:
        """The hot path: one dict store and a counter, under the lock."""
        entry = (payload, time.monotonic() if now is None else now)
        with self._lock:
            self._latest[topic] = entry
            self.messages += 1

    def _copy(self) -> list[tuple[str, tuple[bytes | bytearray, float]]]:
        """The only way readers see the store: one copy taken under the lock."""
        with self._lock:
            return list(self._latest.items())

    def entries(self) -> list[tuple[str, bytes | bytearray, float]]:
        """Every stored topic with its newest payload and arrival time; a copy, safe against the ingest thread."""
        return [(topic, raw, at) for topic, (raw, at) in self._copy()]

    def node_ids(self) -> set[str]:
        nodes = set()
        for topic, _ in self._copy():
            parsed = Topics.parse(self.prefix, topic)
            if parsed is not None and parsed[1] in LEAVES:
                nodes.add(parsed[0])
        return nodes

    def snapshot(self, now: float | None = None) -> list[NodeRow]:
        """Rows sorted with problems first (offline, then stale, then unhealthy), then by node id."""
        current = time.monotonic() if now is None else now
        per_node: dict[str, dict[str, tuple[bytes | bytearray, float]]] = {}
        stored = self._copy()
        for topic, entry in stored:
            parsed = Topics.parse(self.prefix, topic)
            if parsed is not None and parsed[1] in LEAVES:
                per_node.setdefault(parsed[0], {})[parsed[1]] = entry
        live = {id(raw) for _, (raw, _) in stored}
        self._decoded = {key: hit for key, hit in self._decoded.items() if key[1] in live}  # forget replaced payloads
        rows = [self._row(node, leaves, current) for node, leaves in per_node.items()]
        rows.sort(key=lambda r: (r.online, not r.stale, not r.troubled, r.node))
        return rows

    def _cached(self, leaf: str, raw: bytes | bytearray | None) -> JsonDict | None:
        """Decode once per payload object: heartbeats, states and events mostly repeat between snapshots."""
        if raw is None:
            return None
        hit = self._decoded.get((leaf, id(raw)))
        if hit is not None and hit[0] is raw:
            return hit[1]
        data = decode.load(raw)
        decoded = None if data is None else _LEAF_DECODERS[leaf](data)
        self._decoded[(leaf, id(raw))] = (raw, decoded)
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
        pred = self._cached("predictions", raw("predictions"))
        beat = self._cached("heartbeat", raw("heartbeat"))
        state = self._cached("state", raw("state"))
        event = self._cached("events", raw("events"))
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
        pred, beat, state = pred or {}, beat or {}, state or {}
        beat_age, pred_age = age("heartbeat"), age("predictions")
        last_seen = min((max(0.0, now - t) for leaf, (_, t) in leaves.items() if leaf != "status"), default=None)
        # retained status says online, but nothing fresh arrived: the node may be hung without dropping MQTT
        fresh = [a for a in (beat_age, pred_age) if a is not None]
        stale = status == "online" and (not fresh or min(fresh) > self.stale_after)
        # mode and resolution from whichever message carrying them arrived last
        candidates = [
            (leaves[leaf][1], (mode, int(resolution)))
            for leaf, msg in (("predictions", pred), ("state", state), ("heartbeat", beat))
            if (mode := decode.text(msg, "mode")) is not None and (resolution := decode.number(msg, "resolution"))
        ]
        settings = max(candidates)[1] if candidates else None
        model = decode.text(pred.get("model", {}), "version") or decode.text(state.get("model", {}), "version")
        latency = pred.get("latency", {})
        return NodeRow(
            node=node,
            status=status,
            online=status == "online",
            stale=stale,
            label=decode.text(pred, "label"),
            confidence=decode.number(pred, "confidence"),
            fps=_first(decode.number(pred, "fps"), decode.number(beat, "fps")),
            inference_ms=_first(decode.number(latency, "inference"), decode.number(beat, "inference_ms_avg")),
            mode=settings[0] if settings else None,
            resolution=settings[1] if settings else None,
            model_version=model,
            camera=decode.text(beat, "camera"),
            pipeline=decode.text(beat, "pipeline"),
            denied=int(decode.number(beat, "publish_denied") or 0),
            dropped_offline=sum(v for k, v in beat.items() if k.startswith("dropped_offline_")),  # the counters
            cpu_temp_c=decode.number(beat, "cpu_temp_c"),
            heartbeat_age_s=beat_age,
            prediction_age_s=pred_age,
            last_seen_age_s=round(last_seen, 3) if last_seen is not None else None,
            last_event=_describe(event) if event else None,
            bad_payloads=bad,
            server=decode.text(beat, "server"),
            failovers=int(decode.number(beat, "failovers") or 0),
        )


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _describe(event: JsonDict) -> str:
    return f"{event['cmd']}: ok" if event["ok"] else f"{event['cmd']}: {event['error'] or 'failed'}"
