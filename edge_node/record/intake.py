"""From a received message (topic, payload) to a queued row: the one path both sources share."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_node.record.rows import to_row
from edge_node.record.writer import Ack, BatchWriter
from edge_node.wire import Topics

__all__ = ["Intake", "subject_to_topic", "topic_to_subject"]


def topic_to_subject(topic: str) -> str:
    """NATS's MQTT mapping: ``/`` becomes ``.`` and a ``.`` inside a level becomes ``//``."""
    return "".join("//" if ch == "." else "." if ch == "/" else ch for ch in topic)


def subject_to_topic(subject: str) -> str:
    """The MQTT topic of a NATS subject (the reverse of the server's mapping)."""
    return subject.replace("//", "\0").replace(".", "/").replace("\0", ".")


class Intake:
    def __init__(self, prefix: str, writer: BatchWriter, clock: Callable[[], float] = time.time) -> None:
        self._prefix = prefix
        self._writer = writer
        self._clock = clock

    def on_message(self, topic: str, payload: bytes, ack: Ack | None = None) -> bool:
        """False when the row could not be queued (the writer's queue is full): a message with ``ack`` is then
        left unacknowledged for its broker to send again."""
        parsed = Topics.parse(self._prefix, topic)
        row = None if parsed is None else to_row(parsed[0], parsed[1], payload, self._clock())
        if row is None:
            leaf = parsed[1] if parsed is not None else "topic"
            self._writer.count(f"bad_{leaf}")
            if ack is not None:
                ack()  # a payload that cannot be recorded now never can: do not have it sent again
            return True
        return self._writer.put(row, ack)

    def has_room(self) -> bool:
        return self._writer.has_room()
