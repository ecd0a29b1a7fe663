"""The open detections on disk, so that a node killed mid-detection ends it when it starts again.

A consumer that saw a ``start`` waits for its ``end``; after kill -9 or a power cut nobody would send it. The
node writes its open detections (``<state_dir>/watch-open.json``) when one starts or ends, and on start-up ends
each one it finds there (reason ``restart``) with the figures of its last record.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from edge_node.bundle.fsutil import atomic_write_bytes
from edge_node.wire.watch import Detection

__all__ = ["Journal", "ended_by_restart"]

log = logging.getLogger(__name__)

_RECORDS: TypeAdapter[list[Detection]] = TypeAdapter(list[Detection])


class Journal:
    """One file of open detections; the node's watcher is its only writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: bytes | None = None

    def save(self, open_now: list[Detection]) -> None:
        """Write the open detections (crash-safe), unless the file already says the same."""
        data = _RECORDS.dump_json(open_now, exclude_none=True)
        if data == self._last:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, data)
        except OSError as exc:
            log.warning("cannot record open detections in %s: %s (a crash would leave them open)", self.path, exc)
            return
        self._last = data

    def load(self) -> list[Detection]:
        """What a previous run left open; an unreadable file is reported and treated as empty."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read open detections from %s: %s", self.path, exc)
            return []
        try:
            return _RECORDS.validate_json(data)
        except ValidationError as exc:
            log.warning("ignoring %s: not a list of detections (%s)", self.path, exc.errors()[0]["msg"])
            return []


def ended_by_restart(rec: Detection, now: float) -> Detection:
    """The ``end`` of a detection a previous run left open: its figures as last recorded, reason ``restart``."""
    last = rec.ts  # the record's time is its last qualifying frame (``Tracker.open``)
    return rec.model_copy(
        update={
            "event": "end",
            "ts": round(now, 3),
            "ended": last,
            "duration_s": round(last - rec.started, 3),
            "mean_confidence": rec.mean_confidence if rec.mean_confidence is not None else rec.peak_confidence,
            "reason": "restart",
        }
    )
