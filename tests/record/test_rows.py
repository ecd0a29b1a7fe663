"""The pure parts of the recorder: payload to row, spans, durations, NATS subject mapping, batching rules."""

from __future__ import annotations

import json
import random

import pytest

from edge_node.errors import ConfigError
from edge_node.fleet.simnode import SimNode
from edge_node.record.intake import subject_to_topic, topic_to_subject
from edge_node.record.query import Span, parse_duration, spans
from edge_node.record.rows import COLUMNS, to_row
from edge_node.record.writer import in_range, percentile


def test_a_simulated_prediction_becomes_a_row_with_its_sequence_number() -> None:
    sim = SimNode("door-cam", rng=random.Random(1))
    payload = sim.prediction(ts=1000.0)
    row = to_row("door-cam", "predictions", payload, 1000.5)
    assert row is not None and row.table == "predictions"
    values = dict(zip(COLUMNS["predictions"], row.values, strict=True))
    sent = json.loads(payload)
    assert values["seq"] == sent["seq"] and values["ts"] == 1000.0 and values["received"] == 1000.5
    assert values["label"] == sent["label"] and values["latency_ms"] == sent["latency_ms"]["total"]


def test_every_table_row_has_its_columns() -> None:
    sim = SimNode("n1", rng=random.Random(2))
    for leaf, payload in (("predictions", sim.prediction(ts=5.0)), ("heartbeat", sim.heartbeat(ts=5.0))):
        row = to_row("n1", leaf, payload, 5.0)
        assert row is not None and len(row.values) == len(COLUMNS[row.table])
    event = to_row("n1", "events", b'{"id":"c1","cmd":"ping","ok":true,"ts":7.0,"detail":{"a":1}}', 8.0)
    assert event is not None and event.values[2] == "id:c1" and event.values[7] == '{"a":1}'
    notable = to_row("n1", "events", b'{"cmd":"camera_lost","ok":false,"ts":7.0}', 8.0)
    assert notable is not None and notable.values[2] == "cmd:camera_lost"
    ota = to_row("n1", "ota", b'{"node":"n1","ts":3.0,"phase":"active","version":"1.2"}', 4.0)
    assert ota is not None and ota.values[2:4] == ("active", "1.2")
    status = to_row("n1", "status", b"offline", 9.0)
    assert status is not None and status.values == (9.0, "n1", False, 9.0)


@pytest.mark.parametrize(
    ("leaf", "payload"),
    [
        ("predictions", b"not json"),
        ("predictions", b'{"ts": 1.0, "label": "x"}'),  # no seq: cannot be told from a copy
        ("predictions", b'{"ts": NaN, "seq": 1, "label": "x"}'),
        ("predictions", b'{"ts": 1e999, "seq": 1, "label": "x"}'),
        ("predictions", b'{"ts": 1.0, "seq": 99999999999999999999999, "label": "x"}'),
        ("heartbeat", b'{"node": "n"}'),  # no time
        ("events", b'{"cmd": "ping", "ok": "yes", "ts": 1.0}'),
        ("status", b"maybe"),
        ("snapshot", b"\xff\xd8jpeg"),
        ("ota", b'{"ts": 1.0}'),
    ],
)
def test_what_cannot_be_recorded_is_none(leaf: str, payload: bytes) -> None:
    assert to_row("n1", leaf, payload, 1.0) is None


def test_spans_follow_status_changes_and_ignore_repeats() -> None:
    transitions = [
        ("a", 50.0, True),  # the last status before the range
        ("a", 120.0, True),  # a retained "online" seen again: the same span
        ("a", 150.0, False),
        ("a", 170.0, True),
        ("b", 130.0, False),
    ]
    assert spans(transitions, 100.0, 200.0) == [
        Span("a", True, 100.0, 150.0),
        Span("a", False, 150.0, 170.0),
        Span("a", True, 170.0, 200.0),
        Span("b", False, 130.0, 200.0),
    ]


def test_durations() -> None:
    assert parse_duration("10m") == 600 and parse_duration("24h") == 86400 and parse_duration("7d") == 604800
    with pytest.raises(ConfigError, match="10m, 24h, 7d"):
        parse_duration("yesterday")


def test_nats_subjects_map_back_to_topics() -> None:
    for topic in ("ghostpi/node-1/predictions", "ghostpi/cam.door/events"):
        assert subject_to_topic(topic_to_subject(topic)) == topic
    assert topic_to_subject("ghostpi/cam.door/events") == "ghostpi.cam//door.events"


def test_rows_outside_retention_or_from_the_future_are_refused() -> None:
    now = 1_000_000.0
    assert in_range(now - 86400 * 9.9, now, 10) and not in_range(now - 86400 * 10.1, now, 10)
    assert in_range(now + 3600, now, 10) and not in_range(now + 2 * 86400, now, 10)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([], 0.5) is None
