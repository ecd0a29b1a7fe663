"""The dashboard's detection store (issue 21, the timeline): pairing a start and an end by (node, id), the caps
on records and thumbnail bytes with the oldest going first and every drop counted, the lenient finite-only
decoding, the query's filters; the inbox's own bounded queue for detections, and what the stream carries of
them. No broker, no mocks."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge_node.config import DashboardConfig, MqttConfig
from edge_node.dashboard.detections import Detections, Query
from edge_node.dashboard.exposure import exposure
from edge_node.dashboard.inbox import DETECTION_BYTES, MAX_STREAMED, Inbox, Refused
from edge_node.dashboard.server import Dashboard, _Client
from tests.support.detection_feed import end, jpeg, start

T0 = 1_796_279_600.0


def _store(kept: int = 100, thumbnail_bytes: int = 1_000_000) -> Detections:
    return Detections("gp", kept=kept, thumbnail_bytes=thumbnail_bytes)


def _ids(store: Detections, **query: object) -> list[str]:
    return [d["id"] for d in store.query(Query(**query))["detections"]]  # type: ignore[arg-type]


def test_a_start_and_its_end_are_one_record_whatever_the_order_or_repeats() -> None:
    store = _store()
    cat = start("door", "cat", T0)
    assert store.add("door", cat.to_bytes())
    [open_one] = store.query(Query())["detections"]
    assert open_one["open"] is True and open_one["id"] == cat.id and open_one["ended"] is None
    assert store.add("door", cat.to_bytes())  # QoS 1 may deliver it twice: still one record
    assert store.add("door", end(cat, 2.5).to_bytes())
    assert store.add("door", cat.to_bytes())  # a late duplicate start does not reopen it
    [closed] = store.query(Query())["detections"]
    assert closed["open"] is False and closed["duration_s"] == 2.5 and closed["ended"] == T0 + 2.5
    assert closed["frames"] == 10 and closed["reason"] == "gap" and closed["label"] == "tabby"

    lone = end(start("door", "cat", T0 + 100))  # its start came before the dashboard did
    assert store.add("door", lone.to_bytes())
    assert store.add("yard", cat.to_bytes())  # the same id on another node is another detection
    views = store.query(Query())["detections"]
    assert [(d["node"], d["id"], d["open"]) for d in views] == [
        ("door", lone.id, False),
        ("yard", cat.id, True),
        ("door", cat.id, False),
    ]
    info = store.info()
    assert info["kept"] == 3 and info["open"] == 1 and info["nodes"] == ["door", "yard"] and info["rules"] == ["cat"]


def test_the_node_comes_from_the_topic_and_foreign_topics_are_ignored() -> None:
    store = _store()
    lie = start("someone-else", "cat", T0)
    changed = store.ingest(
        [
            ("gp/door/detections", lie.to_bytes(), 0.0),
            ("gp/door/events", lie.to_bytes(), 0.0),  # not a detection topic
            ("other/door/detections", lie.to_bytes(), 0.0),  # another prefix
            ("gp/bad id/detections", lie.to_bytes(), 0.0),  # no node can be called that
            (f"gp/door/detections/snapshot/{lie.id}", jpeg(), 0.0),
        ]
    )
    assert changed == 2
    [record] = store.query(Query())["detections"]
    assert record["node"] == "door" and record["snapshot"] is True
    assert store.thumbnail("door", lie.id) == jpeg()


def test_past_the_cap_the_earliest_arrived_go_first_and_are_counted() -> None:
    store = _store(kept=3)
    firsts = [start("n1", "cat", T0 + 10 - i) for i in range(5)]  # arriving in order, each started earlier
    for det in firsts:
        store.add("n1", det.to_bytes())
    assert store.dropped == 2 and len(store) == 3
    assert _ids(store) == [d.id for d in firsts[2:]]  # the first two arrived first, though they started last
    store.add("n1", end(firsts[0]).to_bytes())  # the end of a dropped one comes back as a closed record...
    assert store.dropped == 3 and _ids(store)[0] == firsts[0].id  # ...and pushes out the next oldest
    store.add("n2", start("n2", "dog", T0).to_bytes())
    store.add("n2", start("n2", "dog", T0 + 1).to_bytes())
    store.add("n2", start("n2", "dog", T0 + 2).to_bytes())
    assert store.info()["rules"] == ["dog"] and store.info()["nodes"] == ["n2"]  # what left the store left the facets


def test_thumbnails_are_capped_in_bytes_oldest_first_and_only_for_held_detections() -> None:
    picture = jpeg()
    store = _store(kept=4, thumbnail_bytes=2 * len(picture) + 10)
    dets = [start("n", "cat", T0 + i, snapshot=True) for i in range(4)]
    for det in dets:
        store.add("n", det.to_bytes())
    assert not store.add_snapshot("n", "cat-1", picture) and store.orphans == 1  # no such detection
    assert not store.add_snapshot("n", dets[0].id, b"<html>") and store.bad == 1  # not a JPEG
    assert not store.add_snapshot("n", dets[0].id, Refused()) and store.bad == 2  # too large for the inbox
    for det in dets[:3]:
        assert store.add_snapshot("n", det.id, picture)
    assert store.thumbnails_dropped == 1 and store.thumbnail_total == 2 * len(picture)
    assert [store.thumbnail("n", d.id) is not None for d in dets] == [False, True, True, False]
    assert len(store) == 4  # the record of the dropped thumbnail stays
    assert store.add_snapshot("n", dets[1].id, picture)  # again for the same detection: replaced, not added
    assert store.thumbnail_total == 2 * len(picture) and store.thumbnails_dropped == 1
    store.add("n", start("n", "cat", T0 + 9).to_bytes())  # the record of dets[0] goes; then dets[1] with its thumbnail
    store.add("n", start("n", "cat", T0 + 10).to_bytes())
    assert store.thumbnail("n", dets[1].id) is None and store.thumbnail_total == len(picture)
    assert not store.add_snapshot("n", dets[3].id, picture + bytes(3 * len(picture)))  # larger than the whole cap


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"event": "start", "id": "cat-1", "rule": "cat", "started": NaN}',
        b'{"event": "start", "id": "cat-1", "rule": "cat", "started": 1e999}',
        b'{"event": "start", "id": "cat-1", "rule": "cat", "started": 1, "frames": 99999999999999999999}',
        b'{"event": "start", "id": "cat-1", "rule": "cat"}',  # no start time
        b'{"event": "begin", "id": "cat-1", "rule": "cat", "started": 1}',
        b'{"event": "start", "id": "../cat", "rule": "cat", "started": 1}',
        b'{"event": "start", "id": "cat-1", "rule": "c a t", "started": 1}',
        b'{"event": "start", "id": 7, "rule": "cat", "started": 1}',
        b'{"event": "start", "rule": "cat", "started": 1}',
    ],
)
def test_what_is_no_detection_is_counted_and_not_kept(payload: bytes) -> None:
    store = _store()
    assert not store.add("n", payload)
    assert store.bad == 1 and len(store) == 0 and store.version == 0


def test_decoding_is_lenient_about_fields_and_bounded_in_size() -> None:
    store = _store()
    newer = json.loads(start("n", "cat", T0).to_bytes()) | {"zone": "sofa", "label": "x" * 10_000, "frames": "3"}
    assert store.add("n", json.dumps(newer | {"reason": "r" * 500}).encode())
    [record] = store.query(Query())["detections"]
    assert len(record["label"]) == 200 and record["frames"] is None and "zone" not in record  # read past, cut
    assert store.add("n", Refused()) is False and store.bad == 1  # larger than the inbox keeps


def test_the_query_filters_by_node_rule_and_overlapping_time_newest_first() -> None:
    store = _store()
    plan = [("a", "cat", 0.0, 5.0), ("a", "dog", 100.0, 20.0), ("b", "cat", 200.0, None), ("b", "cat", 50.0, 1.0)]
    for node, rule, at, duration in plan:
        first = start(node, rule, T0 + at)
        store.add(node, first.to_bytes())
        if duration is not None:
            store.add(node, end(first, duration).to_bytes())
    everything = store.query(Query())
    assert [d["started"] - T0 for d in everything["detections"]] == [200.0, 100.0, 50.0, 0.0]
    assert everything["matching"] == 4 and everything["oldest"] == T0
    assert _ids(store, node="a") == ["dog-1796279700000", "cat-1796279600000"]
    assert _ids(store, rule="cat", node="b") == ["cat-1796279800000", "cat-1796279650000"]
    assert _ids(store, since=T0 + 110, until=T0 + 150) == ["dog-1796279700000"]  # 100..120 overlaps 110..150
    assert _ids(store, since=T0 + 1000) == ["cat-1796279800000"]  # open: it reaches up to now
    assert _ids(store, until=T0 + 49) == ["cat-1796279600000"]
    limited = store.query(Query(rule="cat", limit=1))
    assert limited["matching"] == 3 and len(limited["detections"]) == 1 and limited["detections"][0]["open"] is True


def test_the_inbox_queues_detections_bounded_in_messages_and_bytes() -> None:
    inbox = Inbox("gp", max_nodes=1, backlog=10, detections_backlog=3)
    for i in range(5):
        inbox.detection("gp/a/detections", start("a", "cat", T0 + i).to_bytes())
    inbox.detection("gp/b/detections", start("b", "cat", T0).to_bytes())  # a second node: past max_nodes
    assert inbox.detections_dropped == 2 and inbox.nodes_refused == 1
    taken = inbox.take_detections(2)
    assert [json.loads(raw)["started"] for _, raw, _ in taken] == [T0 + 2, T0 + 3]
    inbox.detection("gp/a/detections", b"{" + b" " * MAX_STREAMED + b"}")
    inbox.detection("gp/a/detections/snapshot/cat-1", jpeg())
    rest = inbox.take_detections(10)
    assert len(rest) == 3 and isinstance(rest[1][1], Refused) and rest[2][1] == jpeg()

    big = Inbox("gp", max_nodes=5, backlog=10, detections_backlog=1000)
    for i in range(20):  # 20 snapshots of 1 MB: more bytes than the queue may hold
        big.detection(f"gp/a/detections/snapshot/cat-{i}", b"\xff\xd8" + bytes(999_000))
    waiting = big.take_detections(1000)
    assert sum(len(raw) for _, raw, _ in waiting) <= DETECTION_BYTES and big.detections_dropped == 20 - len(waiting)
    assert waiting[-1][0] == "gp/a/detections/snapshot/cat-19"  # the oldest went first


def test_the_stream_carries_a_mark_of_the_timeline_not_its_records() -> None:
    """The per-browser bounds of the stream (issue 16) hold: a burst of detections adds a version and a count
    to the batch, a few bytes; the page asks /api/detections for the records, one encoded answer per view."""
    config = DashboardConfig(detections_kept=300)
    dash = Dashboard(config, MqttConfig(host="127.0.0.1"), "gp", None, exposure(config, "127.0.0.1", "here"))
    browser = _Client(asyncio.Queue(maxsize=40), "a browser")
    dash.clients.add(browser)  # what the stream handler does for a connected browser
    for i in range(500):
        dash.inbox.detection(f"gp/n{i % 7}/detections", start(f"n{i % 7}", "cat", T0 + i).to_bytes())
    dash.tick()
    frame = browser.queue.get_nowait()
    assert frame is not None and len(frame) < 500, frame
    batch = json.loads(frame.partition(b"data: ")[2])
    assert batch["detections"] == {"version": 500, "kept": 300} and batch["nodes"] == []
    assert dash.detections.dropped == 200
    answer = dash.timeline(Query(rule="cat", limit=2000))
    assert dash.timeline(Query(rule="cat", limit=2000)) is answer  # encoded once for every browser asking
    assert len(json.loads(answer)["detections"]) == 300
    dash.tick()
    assert browser.queue.empty()  # nothing changed: no batch
