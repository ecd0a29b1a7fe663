"""What one fleet message becomes in the history: a row of one table, or nothing (pure, no I/O).

Payloads are read leniently (``fleet.decode``'s helpers): a newer node's extra fields are ignored, a payload that is not
a JSON object is counted as bad by the caller. Every row carries the node's own time (``ts``; a detection:
``started``) and the moment the recorder received it (``received``), so lag is measurable and a node's clock error
visible.

A table's first column is its time: retention, PostgreSQL's day partitions and the writer's range check go by it.
A detection is one row for its ``start`` and its ``end`` (same ``id``): the stores upsert it (``DETECTION_UPSERT``)
and ``fold`` merges the two when one batch holds both, with the same rule as the SQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from edge_node.fleet import decode

__all__ = ["COLUMNS", "DETECTION_KEY", "DETECTION_UPSERT", "LEAVES", "QOS1_LEAVES", "Row", "fold", "to_row"]

# Columns of every table, in the order rows carry them (the schema in migrations.py has the same names).
COLUMNS: dict[str, tuple[str, ...]] = {
    "predictions": (
        "ts", "node", "seq", "label", "class_id", "confidence", "fps", "latency_ms", "inference_ms",
        "resolution", "mode", "model_version", "received",
    ),
    "heartbeats": (
        "ts", "node", "uptime_s", "fps", "inference_ms", "cpu_percent", "cpu_temp_c", "rss_mb",
        "frames_dropped", "offline_s", "model_version", "mode", "resolution", "camera", "pipeline", "received",
    ),
    "events": ("ts", "node", "key", "id", "cmd", "ok", "error", "detail", "received"),
    "states": ("ts", "node", "mode", "resolution", "model_version", "payload", "received"),
    "ota": ("ts", "node", "phase", "version", "progress", "error", "id", "received"),
    "statuses": ("ts", "node", "online", "received"),
    "detections": (
        "started", "node", "id", "rule", "label", "ended", "duration_s", "frames", "peak_confidence",
        "mean_confidence", "best_ts", "reason", "snapshot", "received",
    ),
}  # fmt: skip

# Only ``<prefix>/<node>/detections`` itself: its ``detections/snapshot/<id>`` subtopic (JPEGs) is not recorded.
LEAVES = ("predictions", "heartbeat", "events", "state", "ota", "status", "detections")
QOS1_LEAVES = ("events", "state", "ota", "status", "detections")  # what the node publishes with QoS 1 (node/outbox.py)
_TABLE = {"predictions": "predictions", "heartbeat": "heartbeats", "events": "events", "state": "states"}
_TABLE |= {"ota": "ota", "status": "statuses", "detections": "detections"}

# A detection's identity. ``started`` is the same in its start and its end; it is in the key because PostgreSQL's
# unique keys on a partitioned table must contain the partition column.
DETECTION_KEY = ("node", "id", "started")
_D = {name: i for i, name in enumerate(COLUMNS["detections"])}
_ENDED, _SNAPSHOT = _D["ended"], _D["snapshot"]
# What an end brings to an open row: everything but the key and the snapshot flag (the start has that).
_END_COLUMNS = tuple(c for c in COLUMNS["detections"] if c not in (*DETECTION_KEY, "snapshot"))
_CLOSES = "detections.ended IS NULL AND excluded.ended IS NOT NULL"
# The conflict clause of both stores: an end completes an open row (and a start after its end changes nothing
# but a missing snapshot flag); a message seen again changes nothing, so it counts as a duplicate.
DETECTION_UPSERT = (
    f"ON CONFLICT ({', '.join(DETECTION_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = CASE WHEN {_CLOSES} THEN excluded.{c} ELSE detections.{c} END" for c in _END_COLUMNS)
    + ", snapshot = COALESCE(detections.snapshot, excluded.snapshot)"
    + f" WHERE ({_CLOSES}) OR (detections.snapshot IS NULL AND excluded.snapshot IS NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    values: tuple[Any, ...]
    sent: float | None = None  # when the node sent it, where that is not the row's time (a detection's end)


def _merge(old: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    """``DETECTION_UPSERT`` in Python: the row after ``new`` meets ``old`` (same key)."""
    out = new if old[_ENDED] is None and new[_ENDED] is not None else old
    snapshot = old[_SNAPSHOT] if old[_SNAPSHOT] is not None else new[_SNAPSHOT]
    return out if out[_SNAPSHOT] == snapshot else (*out[:_SNAPSHOT], snapshot, *out[_SNAPSHOT + 1 :])


def fold(rows: Sequence[Row]) -> tuple[list[Row], int]:
    """One row per detection in a batch (PostgreSQL cannot upsert one key twice in a statement), other rows as
    they are, in order; and how many folded rows changed the row they met (an end its start), so that a store
    counts a batch's rows as written or duplicate the same way whichever batches they came in."""
    out: list[Row] = []
    at: dict[tuple[Any, ...], int] = {}
    changed = 0
    for row in rows:
        if row.table != "detections":
            out.append(row)
            continue
        key = (row.values[_D["node"]], row.values[_D["id"]], row.values[_D["started"]])
        i = at.get(key)
        if i is None:
            at[key] = len(out)
            out.append(row)
            continue
        merged = _merge(out[i].values, row.values)
        if merged != out[i].values:
            changed += 1
            out[i] = replace(row, values=merged)
    return out, changed


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every message: ``json.loads`` with an argument builds a new one per call (3 % of a recorder
# in a profile at 8,000 messages/s).
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def _load(payload: bytes) -> decode.JsonDict | None:
    """A JSON object, or None. Unlike ``decode.load`` no Python hook runs per number (this is the recorder's
    per-message cost); the numbers a row takes are checked one by one in ``_num`` instead."""
    try:
        data = _DECODER.decode(payload.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _num(data: decode.JsonDict, key: str) -> float | None:
    """A finite number (1e999 parses as infinity, a huge integer does not fit a column: both refused)."""
    value = decode.number(data, key)
    if value is None or not math.isfinite(value) or abs(value) > 2**62:
        return None
    return value


def _obj(data: decode.JsonDict, key: str) -> decode.JsonDict:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _int(data: decode.JsonDict, key: str) -> int | None:
    value = _num(data, key)
    return int(value) if value is not None else None


def _detection(node: str, data: decode.JsonDict, received: float) -> Row | None:
    """A start or an end; an end without a start seen is a whole row by itself (it carries every figure)."""
    event, ident, rule = data.get("event"), decode.text(data, "id"), decode.text(data, "rule")
    started = _num(data, "started")
    if event not in ("start", "end") or ident is None or rule is None or started is None:
        return None
    end = event == "end"
    ended = _num(data, "ended") if end else None
    if end and ended is None:
        return None
    snapshot = data.get("snapshot")
    return Row(
        "detections",
        (
            started, node, ident, rule, decode.text(data, "label"), ended,
            _num(data, "duration_s") if end else None, _int(data, "frames"), _num(data, "peak_confidence"),
            _num(data, "mean_confidence") if end else None, _num(data, "best_ts"),
            decode.text(data, "reason") if end else None, snapshot if isinstance(snapshot, bool) else None,
            received,
        ),
        sent=_num(data, "ts"),
    )  # fmt: skip


def to_row(node: str, leaf: str, payload: bytes, received: float) -> Row | None:
    """The row for a message on ``<prefix>/<node>/<leaf>``; None for a payload that cannot be recorded."""
    table = _TABLE.get(leaf)
    if table is None:
        return None
    if leaf == "status":
        text = payload.strip()
        if text not in (b"online", b"offline"):
            return None
        return Row(table, (received, node, text == b"online", received))
    data = _load(payload)
    if data is None:
        return None
    if leaf == "detections":
        return _detection(node, data, received)
    ts = _num(data, "ts")
    if ts is None:
        return None
    if leaf == "predictions":
        seq = _int(data, "seq")
        label = decode.text(data, "label")
        if seq is None or label is None:
            return None
        latency, model = _obj(data, "latency_ms"), _obj(data, "model")
        return Row(
            table,
            (
                ts, node, seq, label, _int(data, "class_id"), _num(data, "confidence"), _num(data, "fps"),
                _num(latency, "total"), _num(latency, "inference"), _int(data, "resolution"),
                decode.text(data, "mode"), decode.text(model, "version"), received,
            ),
        )  # fmt: skip
    if leaf == "heartbeat":
        return Row(
            table,
            (
                ts, node, _num(data, "uptime_s"), _num(data, "fps"), _num(data, "inference_ms_avg"),
                _num(data, "cpu_percent"), _num(data, "cpu_temp_c"), _num(data, "rss_mb"),
                _int(data, "frames_dropped"), _num(data, "offline_s"), decode.text(data, "model_version"),
                decode.text(data, "mode"), _int(data, "resolution"), decode.text(data, "camera"),
                decode.text(data, "pipeline"), received,
            ),
        )  # fmt: skip
    if leaf == "events":
        cmd = decode.text(data, "cmd")
        ok = data.get("ok")
        if cmd is None or not isinstance(ok, bool):
            return None
        ident = decode.text(data, "id")
        detail = data.get("detail")
        detail_json = json.dumps(detail, separators=(",", ":"))[:4000] if isinstance(detail, dict) else None
        # The command id is the event's identity; a notable event without one is known by its cause and time.
        key = f"id:{ident}" if ident is not None else f"cmd:{cmd}"
        return Row(table, (ts, node, key, ident, cmd, ok, decode.text(data, "error"), detail_json, received))
    if leaf == "state":
        model = _obj(data, "model")
        return Row(
            table,
            (
                ts, node, decode.text(data, "mode"), _int(data, "resolution"), decode.text(model, "version"),
                payload.decode("utf-8", "replace")[:16000], received,
            ),
        )  # fmt: skip
    phase = decode.text(data, "phase")
    if phase is None:
        return None
    return Row(
        table,
        (ts, node, phase, decode.text(data, "version"), _num(data, "progress"), decode.text(data, "error"),
         decode.text(data, "id"), received),
    )  # fmt: skip
