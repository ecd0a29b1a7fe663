"""The reliable (QoS 1) queue is bounded and counts what it drops, by topic leaf, like the QoS 0 drops."""

from __future__ import annotations

from edge_node.config import MqttConfig
from edge_node.mqtt.link import Link
from edge_node.wire.topics import Topics


def test_a_full_reliable_queue_drops_the_oldest_and_counts_it() -> None:
    topics = Topics("gp", "n1")
    link = Link(MqttConfig(host="127.0.0.1"), topics, client_id="t", max_reliable=2)  # never connected: all queue
    link.publish(topics.detections, b"1")
    link.publish(topics.events, b"2")
    assert link.dropped_offline == {}
    link.publish(topics.detections, b"3")
    link.publish(topics.detections, b"4")
    assert link.dropped_offline == {"detections": 1, "events": 1}
    assert [o.payload for o in link._reliable] == [b"3", b"4"]
