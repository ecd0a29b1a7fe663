"""The detections the dashboard has seen, for its timeline: bounded, and pure (time is passed in).

Nodes publish a ``start`` and an ``end`` per detection with the same ``id`` on ``<prefix>/<node>/detections``
(docs/detections.md), and, with snapshots on, the best frame's JPEG on ``detections/snapshot/<id>``. The store
pairs them by (node, id): one record per detection, open until its end arrives. An end whose start was never
seen (it came before the dashboard started) is a closed record of its own; a repeated start or end (QoS 1 may
deliver twice) changes the record, never adds one.

Everything is capped, so what a hostile node sends costs a bounded amount of memory: at most ``kept`` records
(past that the record that arrived first goes), thumbnails only for detections the store holds and at most
``thumbnail_bytes`` of them (past that the oldest thumbnails go, their records stay), every string cut to a
fixed length. Payloads are read with the dashboard's lenient decoder, finite numbers only; what cannot be read
is counted, never kept. The node id comes from the topic (what the broker's ACL vouches for), not the payload.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge_node.dashboard.inbox import NODE_ID, Message, Refused
from edge_node.fleet import decode
from edge_node.fleet.decode import JsonDict

__all__ = ["IDENT", "MAX_LIMIT", "RULE_NAME", "Detections", "Query"]

RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a watch rule's name (edge_node/wire/watch.py)
IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a detection id: "<rule>-<ms>" from a node
MAX_LIMIT = 2000  # records one answer may hold
_JPEG = b"\xff\xd8"
_REASON = 32  # characters of an end's reason kept (the node's are a word)
_FIGURES = ("ts", "started", "frames", "peak_confidence", "best_ts", "ended", "duration_s", "mean_confidence")


@dataclass
class _Record:
    node: str
    ident: str
    rule: str
    fields: JsonDict  # label, the figures and reason, as decoded from the newest record
    open: bool = True
    thumbnail: bytes | None = None

    @property
    def started(self) -> float:
        started = self.fields.get("started")
        return float(started) if started is not None else 0.0

    def reaches(self) -> float:
        """The last time this detection covers: its end, or, while open, for ever."""
        if not self.open and self.fields.get("ended") is not None:
            return float(self.fields["ended"])
        return float("inf") if self.open else self.started

    def view(self) -> JsonDict:
        return {
            "node": self.node,
            "id": self.ident,
            "rule": self.rule,
            "open": self.open,
            "snapshot": self.thumbnail is not None,
            **self.fields,
        }


@dataclass(frozen=True)
class Query:
    """A timeline request: each filter optional; a detection matches ``since``/``until`` when it overlaps them."""

    node: str | None = None
    rule: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


class Detections:
    """Detections by (node, id), in the order they arrived, with their thumbnails; every part bounded."""

    def __init__(self, prefix: str, *, kept: int, thumbnail_bytes: int) -> None:
        self.prefix = prefix
        self.kept = kept
        self.thumbnail_bytes = thumbnail_bytes
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()  # oldest arrival first
        self._thumbnails: OrderedDict[tuple[str, str], int] = OrderedDict()  # key -> bytes, oldest first
        self._rules: Counter[str] = Counter()
        self._nodes: Counter[str] = Counter()
        self._sorted: list[_Record] | None = None  # newest first, until the next change
        self.thumbnail_total = 0
        self.version = 0  # changes with every change the timeline would show
        # what the caps left out, so that a capped timeline does not look complete
        self.dropped = 0  # records pushed out by ``kept``
        self.thumbnails_dropped = 0  # thumbnails pushed out by ``thumbnail_bytes`` (their records stay)
        self.bad = 0  # payloads that are no detection: not JSON, no finite numbers, no usable id, rule or event
        self.orphans = 0  # snapshots of detections the store does not hold

    # --- ingest ------------------------------------------------------------------------------------------

    def ingest(self, messages: Iterable[Message]) -> int:
        """Take detection and snapshot messages (topic, payload, arrival); returns how many changed the store."""
        changed = 0
        for topic, raw, _at in messages:
            parts = topic[len(self.prefix) + 1 :].split("/") if topic.startswith(self.prefix + "/") else []
            if len(parts) == 2 and parts[1] == "detections" and NODE_ID.match(parts[0]):
                changed += self.add(parts[0], raw)
            elif len(parts) == 4 and parts[1:3] == ["detections", "snapshot"] and NODE_ID.match(parts[0]):
                changed += self.add_snapshot(parts[0], parts[3], raw)
        return changed

    def add(self, node: str, raw: bytes | bytearray) -> bool:
        """One ``start`` or ``end`` of ``node``; False (and counted) when it is no detection."""
        parsed = None if isinstance(raw, Refused) else _decode(raw)
        if parsed is None:
            self.bad += 1
            return False
        event, ident, rule, fields = parsed
        key = (node, ident)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record(node, ident, rule, fields, open=event == "start")
            self._rules[rule] += 1
            self._nodes[node] += 1
            while len(self._records) > self.kept:
                self._drop_oldest()
        elif event == "end":
            record.fields, record.open = fields, False
        elif record.open:  # a start again (a redelivery): the newer figures; a start never reopens an end
            record.fields = fields
        self._changed()
        return True

    def add_snapshot(self, node: str, ident: str, raw: bytes | bytearray) -> bool:
        """The JPEG of a detection the store holds; anything else is counted and not kept."""
        key = (node, ident)
        record = self._records.get(key)
        if record is None:
            self.orphans += 1
            return False
        if isinstance(raw, Refused) or bytes(raw[:2]) != _JPEG or len(raw) > self.thumbnail_bytes:
            self.bad += 1
            return False
        self._forget_thumbnail(key)
        record.thumbnail = bytes(raw)
        self._thumbnails[key] = len(raw)
        self.thumbnail_total += len(raw)
        while self.thumbnail_total > self.thumbnail_bytes:
            oldest = next(iter(self._thumbnails))
            self._forget_thumbnail(oldest)
            self._records[oldest].thumbnail = None
            self.thumbnails_dropped += 1
        self._changed()
        return True

    def _drop_oldest(self) -> None:
        key, record = self._records.popitem(last=False)
        self._forget_thumbnail(key)
        for counter, name in ((self._rules, record.rule), (self._nodes, record.node)):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]
        self.dropped += 1

    def _forget_thumbnail(self, key: tuple[str, str]) -> None:
        size = self._thumbnails.pop(key, None)
        if size is not None:
            self.thumbnail_total -= size

    def _changed(self) -> None:
        self.version += 1
        self._sorted = None

    # --- reading -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def thumbnail(self, node: str, ident: str) -> bytes | None:
        record = self._records.get((node, ident))
        return None if record is None else record.thumbnail

    def newest_first(self) -> list[_Record]:
        """Every record, the latest start first; sorted once per change, however many requests read it."""
        if self._sorted is None:
            self._sorted = sorted(self._records.values(), key=lambda r: (r.started, r.node, r.ident), reverse=True)
        return self._sorted

    def query(self, q: Query) -> JsonDict:
        """The newest ``q.limit`` matching records, how many matched, and what the store holds and left out."""
        out: list[JsonDict] = []
        matching = 0
        for record in self.newest_first():
            if q.node is not None and record.node != q.node:
                continue
            if q.rule is not None and record.rule != q.rule:
                continue
            if q.until is not None and record.started > q.until:
                continue
            if q.since is not None and record.reaches() < q.since:
                continue
            matching += 1
            if len(out) < q.limit:
                out.append(record.view())
        return {"detections": out, "matching": matching} | self.info()

    def info(self) -> JsonDict:
        """What the timeline covers: how many records, from when, the rules and nodes in it, what was dropped."""
        records = self.newest_first()
        return {
            "version": self.version,
            "kept": len(records),
            "max_kept": self.kept,
            "oldest": records[-1].started if records else None,
            "open": sum(record.open for record in records),
            "rules": sorted(self._rules),
            "nodes": sorted(self._nodes),
            "dropped": self.dropped,
            "thumbnails_dropped": self.thumbnails_dropped,
            "bad_payloads": self.bad,
            "orphan_snapshots": self.orphans,
        }


def _decode(raw: bytes | bytearray) -> tuple[str, str, str, JsonDict] | None:
    """(event, id, rule, fields) of a detection payload, or None: lenient about fields, strict about numbers."""
    data = decode.load(raw)
    if data is None:
        return None
    event, ident, rule = data.get("event"), data.get("id"), data.get("rule")
    if event not in ("start", "end") or not isinstance(ident, str) or not isinstance(rule, str):
        return None
    if not IDENT.match(ident) or not RULE_NAME.match(rule):
        return None
    fields: dict[str, Any] = {key: decode.number(data, key) for key in _FIGURES}
    if fields["started"] is None:
        return None  # a detection without its first frame's time has no place on a timeline
    fields["label"] = decode.text(data, "label")
    reason = decode.text(data, "reason")
    fields["reason"] = reason[:_REASON] if reason is not None else None
    return str(event), ident, rule, fields
