"""Every kind of message the node sends, with its topic, QoS and retain flag: the one place that says so.

Predictions and heartbeats are QoS 0 and dropped while the broker is away (a stale one is worth nothing);
events, detections, the OTA status, the state, snapshots and discovery are queued until sent (QoS 1), and the state, the
OTA status and discovery are retained, so a subscriber that comes later still learns them. docs/mqtt-api.md
lists the topics.
"""

from __future__ import annotations

from typing import Protocol

from edge_node.wire import Detection, Event, Heartbeat, NodeState, OtaStatus, Topics

__all__ = ["Outbox", "Sender"]


class Sender(Protocol):
    """The two ways a link sends (``edge_node.mqtt.Link``; ``tests/support/fakelink.py`` in tests)."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...

    def publish_fast(self, topic: str, payload: bytes) -> bool: ...


class Outbox:
    """Sends typed messages; also the OTA updater's sink (``event`` and ``ota``)."""

    def __init__(self, link: Sender, topics: Topics) -> None:
        self._link = link
        self.topics = topics

    def prediction(self, payload: bytes) -> bool:
        """A prediction already encoded (``mapping.PredictionEncoder``: per frame, no model is built).

        False if it was dropped (the broker is away)."""
        return self._link.publish_fast(self.topics.predictions, payload)

    def heartbeat(self, hb: Heartbeat) -> bool:
        return self._link.publish_fast(self.topics.heartbeat, hb.to_bytes())

    def event(self, ev: Event) -> None:
        self._link.publish(self.topics.events, ev.to_bytes(), qos=1)

    def detection(self, d: Detection) -> None:
        """A watch rule's start or end: queued like events, so it survives a broker outage."""
        self._link.publish(self.topics.detections, d.to_bytes(), qos=1)

    def detection_snapshot(self, ident: str, jpeg: bytes) -> None:
        """The JPEG of a detection's best frame in its first second (``EDGE_SNAPSHOT__ENABLED`` only)."""
        self._link.publish(self.topics.detection_snapshot(ident), jpeg, qos=1)

    def state(self, st: NodeState) -> None:
        self._link.publish(self.topics.state, st.to_bytes(), qos=1, retain=True)

    def ota(self, st: OtaStatus) -> None:
        self._link.publish(self.topics.ota, st.to_bytes(), qos=1, retain=True)

    def snapshot(self, jpeg: bytes) -> None:
        self._link.publish(self.topics.snapshot, jpeg, qos=1)

    def discovery(self, topic: str, payload: bytes) -> None:
        """Home Assistant's discovery config (its topic is under HA's own prefix, not the node's)."""
        self._link.publish(topic, payload, qos=1, retain=True)
