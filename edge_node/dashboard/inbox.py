"""What the dashboard's MQTT thread keeps for the board, bounded in nodes, bytes and messages.

Everything here runs on paho's thread, once per message, so the common case stays a dict lookup, a length
check and a dict store. A topic is looked at closely only the first time it is seen: its node id must be
usable (the same rule as a node's own id) and, past ``max_nodes`` nodes, messages of further nodes are
ignored and counted. A payload larger than its leaf may be is not kept: a :class:`Refused` stands in for it,
which the board counts as a bad payload on that node's card. Command results and OTA phases, where every
message matters, wait in a bounded queue that the push loop drains a bounded number at a time. Detections and
their snapshots (``detections``, ``detections/snapshot/<id>``) wait in one more queue of their own, bounded in
messages and in bytes, so that a burst of detections neither crowds out command results nor is crowded out.
"""

from __future__ import annotations

import re
import time
from collections import deque

from edge_node.fleet import FleetView
from edge_node.wire import Topics

__all__ = [
    "DETECTION_BYTES",
    "MAX_PAYLOAD",
    "MAX_SNAPSHOT",
    "MAX_STREAMED",
    "NODE_ID",
    "Inbox",
    "Message",
    "Refused",
]

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # what a node may call itself (edge_node/config.py)
MAX_PAYLOAD = 64 * 1024  # a latest-wins JSON leaf: a real heartbeat is ~1-2 KB
MAX_STREAMED = 16 * 1024  # a command result or OTA phase (real ones: a few hundred bytes), times the backlog
MAX_SNAPSHOT = 1_000_000  # a snapshot JPEG: the most EDGE_SNAPSHOT__MAX_BYTES allows
_LIMITS = {"snapshot": MAX_SNAPSHOT, "events": MAX_STREAMED, "ota": MAX_STREAMED}
Message = tuple[str, bytes | bytearray, float]  # topic, payload, monotonic arrival time
_REFUSED = -1
DETECTION_BYTES = 16_000_000  # payload bytes waiting in the detections queue (snapshots are up to 1 MB each)


class Refused(bytes):
    """Stands in for a payload too large to keep (always empty; a new object each time, so each one counts)."""


class Inbox(FleetView):
    """The newest payload per admitted topic (for the board's latest-wins leaves) and a bounded queue of
    every message on the streamed leaves."""

    def __init__(self, prefix: str, *, max_nodes: int, backlog: int, detections_backlog: int = 5000) -> None:
        super().__init__(prefix)
        self.max_nodes = max_nodes
        self._limits: dict[str, int] = {}  # admitted topic -> largest payload kept
        self._nodes: set[str] = set()
        self._streamed: deque[Message] = deque(maxlen=backlog)
        self._detections: deque[Message] = deque()  # guarded by FleetView's lock, as is _detection_bytes
        self._detection_bytes = 0
        self.detections_backlog = detections_backlog
        self._changed: set[str] = set()  # topics stored since the last take_changed; guarded by FleetView's lock
        # counters, each written by the MQTT thread only
        self.nodes_refused = 0  # messages of nodes beyond max_nodes, or with ids no node can have
        self.streamed_dropped = 0  # streamed messages pushed out of a full queue before the board took them
        self.detections_dropped = 0  # detection messages pushed out of their full queue before the store took them

    def _admit(self, topic: str) -> int:
        parsed = Topics.parse(self.prefix, topic)
        if parsed is None:
            return _REFUSED
        node, leaf = parsed
        if not self._admit_node(node):
            return _REFUSED
        limit = self._limits[topic] = _LIMITS.get(leaf, MAX_PAYLOAD)
        return limit

    def _admit_node(self, node: str) -> bool:
        if node not in self._nodes:
            if len(self._nodes) >= self.max_nodes or not NODE_ID.match(node):
                self.nodes_refused += 1
                return False
            self._nodes.add(node)
        return True

    def _bounded(self, topic: str, payload: bytes | bytearray) -> bytes | bytearray | None:
        limit = self._limits.get(topic)
        if limit is None:
            limit = self._admit(topic)
        if limit == _REFUSED:
            return None
        return payload if len(payload) <= limit else Refused()

    def ingest(self, topic: str, payload: bytes | bytearray, now: float | None = None) -> None:
        """A latest-wins leaf (predictions, heartbeat, status, state, snapshot)."""
        kept = self._bounded(topic, payload)
        if kept is not None:
            super().ingest(topic, kept, now)
            with self._lock:
                self._changed.add(topic)

    def take_changed(self) -> list[Message]:
        """The topics stored since the last call, with their newest payload: what a tick has to look at, so that
        its cost follows the messages, not the fleet's size (30,000 topics at 10,000 nodes)."""
        with self._lock:
            changed, self._changed = self._changed, set()
            return [(topic, *self._latest[topic]) for topic in changed]

    def stream(self, topic: str, payload: bytes | bytearray) -> None:
        """A leaf where every message matters (events, ota)."""
        kept = self._bounded(topic, payload)
        if kept is None:
            return
        if len(self._streamed) == self._streamed.maxlen:
            self.streamed_dropped += 1
        self._streamed.append((topic, kept, time.monotonic()))

    def take_streamed(self, most: int) -> list[Message]:
        """Up to ``most`` streamed messages, oldest first; the rest wait for the next call."""
        taken: list[Message] = []
        while self._streamed and len(taken) < most:
            taken.append(self._streamed.popleft())
        return taken

    def detection(self, topic: str, payload: bytes | bytearray) -> None:
        """A detection (``<node>/detections``) or its snapshot (``<node>/detections/snapshot/<id>``): every
        one matters, so they queue, the oldest going first past ``detections_backlog`` messages or
        DETECTION_BYTES bytes. Not remembered per topic: every detection id is a new snapshot topic."""
        parts = topic[len(self.prefix) + 1 :].split("/", 2)
        if len(parts) < 2 or not self._admit_node(parts[0]):
            return
        limit = MAX_STREAMED if len(parts) == 2 else MAX_SNAPSHOT
        kept = payload if len(payload) <= limit else Refused()
        with self._lock:
            self._detections.append((topic, kept, time.monotonic()))
            self._detection_bytes += len(kept)
            while len(self._detections) > self.detections_backlog or self._detection_bytes > DETECTION_BYTES:
                self._detection_bytes -= len(self._detections.popleft()[1])
                self.detections_dropped += 1

    def take_detections(self, most: int) -> list[Message]:
        """Up to ``most`` detection messages, oldest first; the rest wait for the next call."""
        with self._lock:
            taken: list[Message] = []
            while self._detections and len(taken) < most:
                taken.append(self._detections.popleft())
                self._detection_bytes -= len(taken[-1][1])
            return taken
