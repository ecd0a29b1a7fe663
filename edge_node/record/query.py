"""``edge-node history``'s questions, as SQL over either store, and the pure parts (time ranges, spans)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_node.errors import ConfigError
from edge_node.record.store import Store

__all__ = ["History", "Span", "TimeRange", "parse_duration", "spans"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``24h``, ``7d``, ``2w`` in seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise ConfigError(f"{text!r} is not a duration: use a number and s, m, h, d or w (10m, 24h, 7d)")
    return float(m[1]) * _UNITS[m[2]]


@dataclass(frozen=True, slots=True)
class TimeRange:
    since: float
    until: float
    node: str | None = None

    def bucket(self, points: int = 60) -> int:
        """Seconds per chart point: about ``points`` points over the range, a whole number of minutes at least."""
        raw = max(60.0, (self.until - self.since) / points)
        return int(raw // 60 * 60)


@dataclass(frozen=True, slots=True)
class Span:
    node: str
    online: bool
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def spans(transitions: list[tuple[str, float, bool]], since: float, until: float) -> list[Span]:
    """Online and offline spans per node from its status changes (ordered by node, then time); a status
    repeated (a retained one seen again) continues its span. Before the first known status nothing is said."""
    out: list[Span] = []
    current: tuple[str, float, bool] | None = None
    for node, ts, online in transitions:
        if current is not None and current[0] != node:
            out.append(Span(current[0], current[2], current[1], until))
            current = None
        if current is None:
            current = (node, max(ts, since), online)
        elif online != current[2]:
            start = max(ts, since)
            out.append(Span(node, current[2], current[1], start))
            current = (node, start, online)
    if current is not None:
        out.append(Span(current[0], current[2], current[1], until))
    return [s for s in out if s.end > s.start]


class History:
    """Questions about a time range; ``node`` None means the whole fleet."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._d = store.dialect

    def _where(self, r: TimeRange, table: str = "") -> tuple[str, list[Any]]:
        col = f"{table}.ts" if table else "ts"
        node = f"{table}.node" if table else "node"
        sql = f"{col} >= {self._d.ts_in()} AND {col} < {self._d.ts_in()}"
        params: list[Any] = [r.since, r.until]
        if r.node is not None:
            sql += f" AND {node} = {self._d.ph}"
            params.append(r.node)
        return sql, params

    def label_counts(self, r: TimeRange, limit: int = 20) -> list[tuple[str, int]]:
        where, params = self._where(r)
        rows = self._store.query(
            f"SELECT label, count(*) AS n FROM predictions WHERE {where} GROUP BY label ORDER BY n DESC, label "
            f"LIMIT {int(limit)}",
            params,
        )
        return [(str(label), int(n)) for label, n in rows]

    def hourly_labels(self, r: TimeRange, labels: Sequence[str] | None = None) -> list[tuple[float, str, int]]:
        """Predictions per hour and label (a node's page); ``labels``: only those (the top few of a range)."""
        where, params = self._where(r)
        if labels is not None:
            if not labels:
                return []
            where += f" AND label IN ({', '.join([self._d.ph] * len(labels))})"
            params.extend(labels)
        hour = self._d.bucket(3600)
        rows = self._store.query(
            f"SELECT {hour} AS h, label, count(*) FROM predictions WHERE {where} GROUP BY h, label ORDER BY h, label",
            params,
        )
        return [(float(h), str(label), int(n)) for h, label, n in rows]

    def hourly_counts(self, r: TimeRange) -> list[tuple[float, int]]:
        """Predictions per hour, fleet-wide (or one node's)."""
        where, params = self._where(r)
        hour = self._d.bucket(3600)
        rows = self._store.query(
            f"SELECT {hour} AS h, count(*) FROM predictions WHERE {where} GROUP BY h ORDER BY h", params
        )
        return [(float(h), int(n)) for h, n in rows]

    def series(self, r: TimeRange, points: int = 60, step: int | None = None) -> list[dict[str, float | None]]:
        """Heartbeat averages per time bucket (``step`` seconds, or about ``points`` over the range): fps,
        inference latency, CPU temperature, RSS."""
        where, params = self._where(r)
        step = step or r.bucket(points)
        rows = self._store.query(
            f"SELECT {self._d.bucket(step)} AS b, avg(fps), avg(inference_ms), avg(cpu_temp_c), avg(rss_mb), "
            f"count(DISTINCT node) FROM heartbeats WHERE {where} GROUP BY b ORDER BY b",
            params,
        )
        names = ("ts", "fps", "inference_ms", "cpu_temp_c", "rss_mb", "nodes")
        return [{k: (None if v is None else round(float(v), 3)) for k, v in zip(names, row, strict=True)}
                for row in rows]  # fmt: skip

    def nodes(self, r: TimeRange) -> list[dict[str, Any]]:
        """Each node heard from in the range (heartbeats): last seen, heartbeats, its latest model and maxima."""
        where, params = self._where(r)
        rows = self._store.query(
            f"SELECT node, max({self._d.ts_out()}), count(*), max(cpu_temp_c), max(rss_mb), avg(fps), "
            f"max(model_version) FROM heartbeats WHERE {where} GROUP BY node ORDER BY node",
            params,
        )
        names = ("node", "last_seen", "heartbeats", "max_temp_c", "max_rss_mb", "avg_fps", "model")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def transitions(self, r: TimeRange) -> list[tuple[str, float, bool]]:
        """Status changes in the range, each node's last status before it first."""
        d = self._d
        where, params = self._where(r)
        node_filter = f" AND node = {d.ph}" if r.node is not None else ""
        before = f"ts < {d.ts_in()}{node_filter}"
        before_params: list[Any] = [r.since] + ([r.node] if r.node is not None else [])
        rows = self._store.query(
            f"SELECT s.node, {d.ts_out('s.ts')}, s.online FROM statuses s JOIN (SELECT node, max(ts) AS m FROM "
            f"statuses WHERE {before} GROUP BY node) l ON s.node = l.node AND s.ts = l.m "
            f"UNION ALL SELECT node, {d.ts_out()}, online FROM statuses WHERE {where} ORDER BY 1, 2",
            before_params + params,
        )
        return [(str(n), float(ts), bool(online)) for n, ts, online in rows]

    def spans(self, r: TimeRange) -> list[Span]:
        return spans(self.transitions(r), r.since, r.until)

    def events(self, r: TimeRange, limit: int = 100) -> list[dict[str, Any]]:
        where, params = self._where(r)
        rows = self._store.query(
            f"SELECT {self._d.ts_out()}, node, cmd, id, ok, error FROM events WHERE {where} "
            f"ORDER BY ts DESC LIMIT {int(limit)}",
            params,
        )
        names = ("ts", "node", "cmd", "id", "ok", "error")
        return [dict(zip(names, (*row[:4], bool(row[4]), row[5]), strict=True)) for row in rows]

    def ota(self, r: TimeRange, limit: int = 100) -> list[dict[str, Any]]:
        where, params = self._where(r)
        rows = self._store.query(
            f"SELECT {self._d.ts_out()}, node, phase, version, error FROM ota WHERE {where} "
            f"ORDER BY ts DESC LIMIT {int(limit)}",
            params,
        )
        names = ("ts", "node", "phase", "version", "error")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def detections(
        self, r: TimeRange, node: str | None = None, rule: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Detections that ran during the range (started before its end, not ended before its start), newest
        first; an open one (its end not seen yet) has ``open`` true and no ``ended``."""
        d = self._d
        where = f"started < {d.ts_in()} AND (ended IS NULL OR ended >= {d.ts_in()})"
        params: list[Any] = [r.until, r.since]
        node = node if node is not None else r.node
        for column, value in (("node", node), ("rule", rule)):
            if value is not None:
                where += f" AND {column} = {d.ph}"
                params.append(value)
        rows = self._store.query(
            f"SELECT {d.ts_out('started')}, node, id, rule, label, {d.ts_out('ended')}, duration_s, frames, "
            f"peak_confidence, mean_confidence, {d.ts_out('best_ts')}, reason, snapshot, {d.ts_out('received')} "
            f"FROM detections WHERE {where} ORDER BY started DESC, node, id LIMIT {int(limit)}",
            params,
        )
        names = ("started", "node", "id", "rule", "label", "ended", "duration_s", "frames", "peak_confidence",
                 "mean_confidence", "best_ts", "reason", "snapshot", "received")  # fmt: skip
        out = []
        for row in rows:
            one = dict(zip(names, row, strict=True))
            one["snapshot"] = None if one["snapshot"] is None else bool(one["snapshot"])
            one["open"] = one["ended"] is None
            out.append(one)
        return out

    def report(self, r: TimeRange) -> dict[str, Any]:
        """Everything ``edge-node history`` shows, as JSON-ready data."""
        return {
            "node": r.node,
            "since": r.since,
            "until": r.until,
            "labels": [{"label": label, "count": n} for label, n in self.label_counts(r)],
            "series": self.series(r),
            "nodes": self.nodes(r),
            "spans": [
                {"node": s.node, "online": s.online, "start": s.start, "end": s.end, "seconds": round(s.seconds, 1)}
                for s in self.spans(r)
            ],
            "events": self.events(r),
            "ota": self.ota(r),
        }
