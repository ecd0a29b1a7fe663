"""What one fleet message becomes in the history: a row of one table, or nothing (pure, no I/O).

Payloads are read leniently (``fleet.decode``'s helpers): a newer node's extra fields are ignored, a payload that is not
a JSON object is counted as bad by the caller. Every row carries the node's own timestamp (``ts``) and the
moment the recorder received it (``received``), so lag is measurable and a node's clock error visible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edge_node.fleet import decode

__all__ = ["COLUMNS", "LEAVES", "QOS1_LEAVES", "Row", "to_row"]

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
}  # fmt: skip

LEAVES = ("predictions", "heartbeat", "events", "state", "ota", "status")
QOS1_LEAVES = ("events", "state", "ota", "status")  # what the node publishes with QoS 1 (node/outbox.py)
_TABLE = {"predictions": "predictions", "heartbeat": "heartbeats", "events": "events", "state": "states"}
_TABLE |= {"ota": "ota", "status": "statuses"}


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    values: tuple[Any, ...]


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _load(payload: bytes) -> decode.JsonDict | None:
    """A JSON object, or None. Unlike ``decode.load`` no Python hook runs per number (this is the recorder's
    per-message cost); the numbers a row takes are checked one by one in ``_num`` instead."""
    try:
        data = json.loads(payload, parse_constant=_not_json)
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
