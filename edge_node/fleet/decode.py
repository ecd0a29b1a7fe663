"""Lenient payload reading for every viewer of the fleet (``monitor`` and the web dashboard): known fields are
picked and type-checked, the rest is kept generically. A newer node that adds fields must never blank a card
or count as a bad payload (the wire models in wire/messages.py refuse unknown fields on purpose; a viewer must
not).

Lenient about fields, strict about numbers and bounded in size. ``NaN``, ``Infinity`` and ``1e999`` are not
JSON numbers a browser can read back: one of them on the page's stream made ``JSON.parse`` throw for every
viewer. So a payload holding one is refused whole (the caller counts it as bad), as is an integer too large
to be a float. Every string, key and list taken from a payload is cut to a fixed length, so what one node
sends costs the dashboard a bounded amount of memory per card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from itertools import islice
from typing import Any

__all__ = [
    "MAX_FIELDS",
    "MAX_KEY",
    "MAX_TEXT",
    "SECTIONS",
    "JsonDict",
    "event",
    "heartbeat",
    "load",
    "number",
    "ota",
    "prediction",
    "state",
    "text",
]

JsonDict = dict[str, Any]

_HB_KNOWN = {
    "node", "ts", "uptime_s", "fps", "inference_ms_avg", "cpu_percent", "cpu_temp_c", "rss_mb",
    "frames_captured", "frames_processed", "frames_dropped", "reconnects", "model_version", "model_source",
    "mode", "resolution", "camera", "camera_last_frame_age_s", "pipeline", "frames_failed", "publish_denied",
    "runtime", "precision", "last_error", "offline_s", "server", "failovers",
}  # fmt: skip
_HB_COUNTS = ("restarts", "dropped_offline")  # {what: count} objects, shown as one counter per key
MAX_TEXT = 200  # characters of any string value shown
MAX_KEY = 64  # characters of a field name shown
MAX_FIELDS = 24  # unknown heartbeat fields (by name), counters per object, event details: the first ones
_MAX_WORKERS = 16
_MAX_INT = 2**63  # larger integers are refused: float() of them may overflow, and no counter gets there


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -_MAX_INT < value < _MAX_INT:
        raise ValueError(f"the integer {text[:20]}... is out of range")
    return value


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def load(raw: bytes | bytearray) -> JsonDict | None:
    """A JSON object with finite numbers only, or None for anything else (the caller counts a bad payload)."""
    try:
        data = json.loads(raw, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def number(data: JsonDict, key: str) -> float | None:
    """``data[key]`` if it is a number (not a boolean), else None."""
    value = data.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def text(data: JsonDict, key: str) -> str | None:
    """``data[key]`` cut to MAX_TEXT if it is a string, else None."""
    value = data.get(key)
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _obj(data: JsonDict, key: str) -> JsonDict:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _first(items: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The first MAX_FIELDS items, names cut to MAX_KEY."""
    return [(key[:MAX_KEY], value) for key, value in islice(items, MAX_FIELDS)]


def _model(data: JsonDict) -> JsonDict:
    m = _obj(data, "model")
    return {k: text(m, k) for k in ("name", "version", "precision", "runtime") if text(m, k) is not None}


def _generic(value: object) -> object:
    """Numbers, booleans and short strings as they are; anything nested as compact, truncated JSON text."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return value[:MAX_TEXT]
    return json.dumps(value, separators=(",", ":"))[:MAX_TEXT]


def prediction(data: JsonDict) -> JsonDict:
    latency = _obj(data, "latency_ms")
    top = data.get("top_k")
    top_k = [
        [text(item, "label"), item.get("confidence")]
        for item in (top if isinstance(top, list) else [])[:5]
        if isinstance(item, dict) and isinstance(item.get("label"), str) and number(item, "confidence") is not None
    ]
    return {
        "seq": number(data, "seq"),
        "ts": number(data, "ts"),
        "label": text(data, "label"),
        "confidence": number(data, "confidence"),
        "top_k": top_k,
        "fps": number(data, "fps"),
        "latency": {k: number(latency, k) for k in ("preprocess", "inference", "total")},
        "resolution": number(data, "resolution"),
        "mode": text(data, "mode"),
        "model": _model(data),
    }


def heartbeat(data: JsonDict) -> JsonDict:
    out: JsonDict = {k: _generic(data[k]) for k in _HB_KNOWN if k in data and not isinstance(data[k], dict | list)}
    consumed = set(out)
    for key in _HB_COUNTS:
        if isinstance(data.get(key), dict):
            consumed.add(key)
            for what, count in _first(data[key].items()):
                if isinstance(count, int) and not isinstance(count, bool):
                    out[f"{key}_{what}"] = count
    workers = data.get("workers")
    if isinstance(workers, list) and all(
        isinstance(w, dict) and number(w, "busy_percent") is not None for w in workers
    ):
        consumed.add("workers")
        out["workers_busy"] = " ".join(f"{w['busy_percent']:.0f}%" for w in workers[:_MAX_WORKERS])
    rest = {k: v for k, v in data.items() if k not in consumed}
    out["other"] = {k: _generic(v) for k, v in _first(sorted(rest.items()))}
    if len(rest) > MAX_FIELDS:
        out["other"]["more fields"] = len(rest) - MAX_FIELDS
    return out


def state(data: JsonDict) -> JsonDict:
    return {
        "mode": text(data, "mode"),
        "resolution": number(data, "resolution"),
        "model": _model(data),
        "publish": text(data, "publish"),
        "publish_max_hz": number(data, "publish_max_hz"),
        "version": text(data, "version"),
    }


def ota(data: JsonDict) -> JsonDict:
    return {k: v for k in ("phase", "version", "error", "id") if (v := text(data, k)) is not None} | {
        "progress": number(data, "progress"),
        "ts": number(data, "ts"),
    }


def event(data: JsonDict) -> JsonDict:
    return {
        "id": text(data, "id"),
        "cmd": text(data, "cmd") or "?",
        "ok": data.get("ok") is True,
        "error": text(data, "error"),
        "detail": {k: _generic(v) for k, v in _first(_obj(data, "detail").items())},
        "ts": number(data, "ts"),
    }


SECTIONS = {"predictions": prediction, "heartbeat": heartbeat, "state": state}  # the leaves kept newest-only
