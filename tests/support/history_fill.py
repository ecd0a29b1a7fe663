"""A recorder database with a known past for the dashboard's history tests, written through the recorder's own
row decoding and store (``to_row`` and ``Store.write``), as ``edge-node record`` writes it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from edge_node.record.rows import Row, to_row
from edge_node.record.store import Store

__all__ = ["HOURLY_24H", "LABELS_24H", "fill"]

# Whole epoch hours before the one ``now`` falls in, each with its predictions of node "door", in the middle
# of the hour (far from its edges): the last 24 h's counts are these plus two "cat"s a minute ago.
_PAST = {
    5: {"cat": 2, "person": 4},
    3: {"a1": 2, "a2": 2, "a3": 2, "a4": 2, "a5": 2, "a6": 2, "yak": 1, "zebra": 1},
    2: {"cat": 7, "dog": 3},
    30: {"bird": 5},  # beyond 24 h, within 7 days
}
# The last 24 h: the 8 most frequent labels (ties by name), and per hour (hours ago -> counts in that order,
# other, total); "other" of 3 hours ago is a6, yak and zebra.
LABELS_24H = ["cat", "person", "dog", "a1", "a2", "a3", "a4", "a5"]
HOURLY_24H = {
    5: ([2, 4, 0, 0, 0, 0, 0, 0], 0, 6),
    3: ([0, 0, 0, 2, 2, 2, 2, 2], 4, 14),
    2: ([7, 0, 3, 0, 0, 0, 0, 0], 0, 10),
}


def _row(node: str, leaf: str, data: Mapping[str, float | str]) -> Row:
    row = to_row(node, leaf, json.dumps(data).encode(), float(data["ts"]))
    assert row is not None, data
    return row


def fill(store: Store, now: float) -> None:
    """Node "door": a heartbeat every 5 min for 30 h, at 10 fps and 40 ms except during the epoch hour that
    began 5 hours before ``now``'s (20 fps, 60 ms), the predictions of _PAST and two "cat"s a minute ago.
    Node "yard": a heartbeat at 99 fps and 50 "cat"s two hours ago, which no answer about "door" may show."""
    hour = math.floor(now / 3600) * 3600
    peak = hour - 5 * 3600
    rows = []
    seq = 0
    for k in range(30 * 12):
        ts = now - 1 - k * 300
        hot = peak <= ts < peak + 3600
        beat = {"ts": ts, "fps": 20.0 if hot else 10.0, "inference_ms_avg": 60.0 if hot else 40.0,
                "cpu_temp_c": 50.0, "rss_mb": 120.0}  # fmt: skip
        rows.append(_row("door", "heartbeat", beat))
    for ago, counts in _PAST.items():
        at = hour - ago * 3600 + 1800
        for label, n in counts.items():
            for _ in range(n):
                seq += 1
                rows.append(_row("door", "predictions", {"ts": at + seq, "seq": seq, "label": label}))
    for i in range(2):
        seq += 1
        rows.append(_row("door", "predictions", {"ts": now - 60 + i, "seq": seq, "label": "cat"}))
    rows.append(_row("yard", "heartbeat", {"ts": now - 2 * 3600, "fps": 99.0, "inference_ms_avg": 9.0}))
    for i in range(50):
        rows.append(_row("yard", "predictions", {"ts": hour - 2 * 3600 + 1800 + i, "seq": i, "label": "cat"}))
    assert store.write(rows) == len(rows)
