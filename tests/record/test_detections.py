"""Detections in the history: a start makes a row, its end completes it (an end alone makes a whole one), a
message seen again changes nothing, a bad payload is counted; both stores, the migration from schema 1, the
``History.detections`` filters, and ``edge-node record`` on a real mosquitto answering ``history detections``."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from paho.mqtt.client import topic_matches_sub

from edge_node.config import RecordConfig
from edge_node.record.intake import Intake
from edge_node.record.migrations import POSTGRES, SQLITE
from edge_node.record.mqtt_source import subscriptions
from edge_node.record.postgres import PostgresStore, partition_name
from edge_node.record.query import History, TimeRange
from edge_node.record.rows import COLUMNS, QOS1_LEAVES, Row, fold, to_row
from edge_node.record.sqlite import SqliteStore, migrate
from edge_node.record.store import Store
from edge_node.record.writer import BatchWriter
from edge_node.wire import RecorderHeartbeat, Topics
from edge_node.wire.watch import Detection
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector
from tests.support.paths import REPO, clean_env, run_cli
from tests.support.record_procs import RecorderProcess, wait_until

NOW = round(time.time(), 3)
PREFIX = "ghostpi"


def _start(node: str = "door", rule: str = "cat", started: float = NOW - 60, **kw: Any) -> Detection:
    return Detection(
        node=node, rule=rule, event="start", id=f"{rule}-{int(started * 1000)}", ts=started + 0.4, started=started,
        label="tabby", frames=3, peak_confidence=0.61, best_ts=started + 0.2, **kw,
    )  # fmt: skip


def _end(start: Detection, duration: float = 4.0) -> Detection:
    return start.model_copy(
        update={"event": "end", "ts": start.started + duration + 1, "label": "Egyptian cat", "frames": 20,
                "peak_confidence": 0.9047, "best_ts": start.started + 1.5, "ended": start.started + duration,
                "duration_s": duration, "mean_confidence": 0.8, "reason": "gap", "snapshot": None}
    )  # fmt: skip


def _row(d: Detection, received: float = NOW) -> Row:
    row = to_row(d.node, "detections", d.to_bytes(), received)
    assert row is not None
    return row


def _stored(store: Store) -> list[dict[str, Any]]:
    d = store.dialect
    cols = [d.ts_out(c) if c in ("started", "ended", "best_ts", "received") else c for c in COLUMNS["detections"]]
    rows = store.query(f"SELECT {', '.join(cols)} FROM detections ORDER BY started, node, id")
    return [dict(zip(COLUMNS["detections"], r, strict=True)) for r in rows]


# --- the row mapping (pure) ------------------------------------------------------------------------------------


def test_a_start_is_an_open_row_and_its_end_the_whole_detection() -> None:
    start = _start(snapshot=True)
    row = _row(start, NOW + 0.5)
    v = dict(zip(COLUMNS["detections"], row.values, strict=True))
    assert (v["started"], v["node"], v["id"], v["rule"], v["label"]) == (
        start.started,
        "door",
        start.id,
        "cat",
        "tabby",
    )
    assert v["ended"] is None and v["duration_s"] is None and v["reason"] is None and v["snapshot"] is True
    assert v["received"] == NOW + 0.5 and row.sent == start.ts  # lag is measured from when the node said it
    end = dict(zip(COLUMNS["detections"], _row(_end(start)).values, strict=True))
    assert (end["ended"], end["duration_s"], end["frames"], end["reason"]) == (start.started + 4, 4.0, 20, "gap")
    assert end["peak_confidence"] == 0.9047 and end["mean_confidence"] == 0.8 and end["snapshot"] is None


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'["start"]',
        b'{"event": "start", "rule": "cat", "started": 1.0}',  # no id: cannot be matched with its end
        b'{"event": "begin", "id": "c-1", "rule": "cat", "started": 1.0}',
        b'{"event": "start", "id": "c-1", "rule": "cat", "started": "yesterday"}',
        b'{"event": "start", "id": "c-1", "rule": "cat", "started": 1e999}',
        b'{"event": "end", "id": "c-1", "rule": "cat", "started": 1.0}',  # an end without its end time
    ],
)
def test_a_detection_that_cannot_be_recorded_is_none(payload: bytes) -> None:
    assert to_row("door", "detections", payload, 1.0) is None


def test_a_bad_detection_is_counted_as_bad_and_nothing_is_queued(tmp_path: Path) -> None:
    writer = BatchWriter(lambda: SqliteStore(tmp_path / "h.db"), RecordConfig())  # not started: nothing taken
    intake = Intake(PREFIX, writer)
    intake.on_message("ghostpi/door/detections", b'{"event": "start"}')
    intake.on_message("ghostpi/door/detections", _start().to_bytes())
    stats = writer.stats()
    assert stats.dropped["bad_detections"] == 1 and stats.queued == 1


def test_fold_keeps_one_row_per_detection_in_a_batch() -> None:
    start = _start(snapshot=True)
    other = _start(node="porch")
    folded, changed = fold([_row(start), _row(other), _row(_end(start)), _row(_end(start)), _row(start)])
    assert changed == 1  # the end completed its start; its copy and the start's copy changed nothing
    assert [r.values[1] for r in folded] == ["door", "porch"]
    v = dict(zip(COLUMNS["detections"], folded[0].values, strict=True))
    assert v["ended"] == start.started + 4 and v["frames"] == 20 and v["snapshot"] is True  # the start's flag kept


def test_detections_are_subscribed_with_qos1_and_their_snapshots_are_not() -> None:
    subs = subscriptions(PREFIX, "record", shared=False)
    assert ("ghostpi/+/detections", 1) in subs and "detections" in QOS1_LEAVES  # NATS: the durable consumer
    assert not [f for f, _ in subs if topic_matches_sub(f, "ghostpi/door/detections/snapshot/cat-1")]
    shared = subscriptions(PREFIX, "record", shared=True)
    assert ("$share/record/ghostpi/+/detections", 1) in shared


def test_the_recorder_keeps_every_json_leaf_a_node_sends_at_its_documented_qos() -> None:
    table = (REPO / "docs" / "mqtt-api.md").read_text()
    sent = {leaf: int(qos) for leaf, qos in re.findall(r"^\| `([a-z/]+)` \| node → \| (\d) \|", table, flags=re.M)}
    assert "detections" in sent and sent.pop("snapshot") == 1  # a JPEG: not recorded
    assert dict((f.split("/")[-1], q) for f, q in subscriptions(PREFIX, "record", shared=False)) == sent


# --- both stores -----------------------------------------------------------------------------------------------


def test_start_then_end_is_one_row_and_messages_seen_again_change_nothing(store: Store) -> None:
    start = _start(snapshot=True)
    assert store.write([_row(start)]) == 1
    assert store.write([_row(start, NOW + 1)]) == 0  # QoS 1 sent again
    [row] = _stored(store)
    assert row["ended"] is None and row["frames"] == 3 and row["snapshot"] in (True, 1)
    end = _end(start)
    assert store.write([_row(end, NOW + 5)]) == 1
    assert store.write([_row(end, NOW + 9)]) == 0
    assert store.write([_row(start, NOW + 9)]) == 0  # a late copy of the start does not reopen it
    [row] = _stored(store)
    assert row["ended"] == pytest.approx(start.started + 4, abs=1e-3) and row["duration_s"] == 4.0
    assert (row["label"], row["frames"], row["reason"], row["mean_confidence"]) == ("Egyptian cat", 20, "gap", 0.8)
    assert row["peak_confidence"] == 0.9047 and row["snapshot"] in (True, 1)  # the start's flag survives its end
    assert row["received"] == pytest.approx(NOW + 5, abs=1e-3)  # when the end arrived


def test_an_end_alone_or_with_its_start_in_one_batch_is_a_whole_row(store: Store) -> None:
    alone = _start(node="a")
    assert store.write([_row(_end(alone))]) == 1
    both = _start(node="b", snapshot=True)
    assert store.write([_row(both), _row(_end(both)), _row(_end(both))]) == 2  # as in three batches
    late = _start(node="c", snapshot=True)  # the start after its end (redelivered out of order)
    store.write([_row(_end(late))])
    assert store.write([_row(late)]) == 1  # brings only the snapshot flag
    rows = {r["node"]: r for r in _stored(store)}
    assert all(r["duration_s"] == 4.0 and r["frames"] == 20 and r["reason"] == "gap" for r in rows.values())
    assert not rows["a"]["snapshot"] and rows["b"]["snapshot"] and rows["c"]["snapshot"]


def test_history_lists_detections_newest_first_with_filters(store: Store) -> None:
    old = _start(node="door", started=NOW - 7200)
    cat = _start(node="door", started=NOW - 600)
    bird = _start(node="door", rule="bird", started=NOW - 300)
    porch = _start(node="porch", started=NOW - 200)
    store.write([_row(old), _row(_end(old)), _row(cat), _row(_end(cat)), _row(bird), _row(porch)])
    h = History(store)
    hour = TimeRange(NOW - 3600, NOW + 1)
    found = h.detections(hour)
    assert [(d["node"], d["rule"]) for d in found] == [("porch", "cat"), ("door", "bird"), ("door", "cat")]
    assert [d["open"] for d in found] == [True, True, False] and found[0]["ended"] is None
    assert found[2]["duration_s"] == 4.0 and found[2]["started"] == pytest.approx(cat.started, abs=1e-3)
    assert found[2]["id"] == cat.id and found[2]["snapshot"] is None and found[2]["peak_confidence"] == 0.9047
    assert [d["rule"] for d in h.detections(hour, node="door")] == ["bird", "cat"]
    assert [d["node"] for d in h.detections(hour, rule="cat")] == ["porch", "door"]
    assert [d["rule"] for d in h.detections(TimeRange(NOW - 3600, NOW + 1, "door"), rule="cat")] == ["cat"]
    assert len(h.detections(hour, limit=1)) == 1
    assert [d["id"] for d in h.detections(TimeRange(NOW - 86400, NOW - 3600))] == [old.id]
    json.dumps(found)  # JSON-ready
    # an open detection that began before the range still runs in it; one ended before the range does not
    assert porch.id in [d["id"] for d in h.detections(TimeRange(NOW - 100, NOW + 1))]
    assert cat.id not in [d["id"] for d in h.detections(TimeRange(NOW - 100, NOW + 1))]


# --- the migration from schema 1 -------------------------------------------------------------------------------


def test_a_schema_1_sqlite_history_migrates_forward(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, SQLITE[:1]) == 1  # what edge-node wrote before detections
    conn.execute("INSERT INTO statuses VALUES (?, 'door', 1, ?)", (NOW - 30, NOW - 30))
    conn.close()
    s = SqliteStore(path)
    try:
        assert s.query("SELECT version, name FROM schema_migrations ORDER BY version") == [
            (1, "initial"),
            (2, "detections"),
        ]
        assert s.query("SELECT count(*) FROM statuses") == [(1,)]
        assert s.write([_row(_start())]) == 1 and len(_stored(s)) == 1
    finally:
        s.close()


def test_a_schema_1_postgres_history_migrates_forward(pg_fresh: str) -> None:
    with psycopg.connect(pg_fresh) as conn:  # schema 1 as the previous edge-node made it, with a day of statuses
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text, "
                     "applied timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        for statement in POSTGRES[0].statements:
            conn.execute(statement.encode())
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'initial')")
        day = int(NOW // 86400)
        bounds = [dt.datetime.fromtimestamp(d * 86400, dt.UTC).isoformat() for d in (day, day + 1)]
        conn.execute(f"CREATE TABLE {partition_name('statuses', day)} PARTITION OF statuses "
                     f"FOR VALUES FROM ('{bounds[0]}') TO ('{bounds[1]}')")  # fmt: skip
        conn.execute(f"INSERT INTO statuses VALUES (to_timestamp({NOW}), 'door', true, to_timestamp({NOW}))")
    s = PostgresStore(pg_fresh)
    try:
        assert s.query("SELECT version FROM schema_migrations ORDER BY version") == [(1,), (2,)]
        assert s.query("SELECT count(*) FROM statuses") == [(1,)]
        start = _start()
        assert s.write([_row(start), _row(_end(start))]) == 2  # the start written, then completed by its end
        assert [p for p, _ in s.partitions() if p.startswith("detections_p")]  # made like the others' days
        assert _stored(s)[0]["reason"] == "gap"
    finally:
        s.close()


# --- end to end: mosquitto, edge-node record, edge-node history detections -------------------------------------


def test_recorded_detections_are_listed_by_history_detections(
    tmp_path: Path, mosquitto: Mosquitto, bus: Collector
) -> None:
    rec = RecorderProcess(tmp_path / "rec", "det", {"EDGE_MQTT__HOST": "127.0.0.1",
                                                    "EDGE_MQTT__PORT": str(mosquitto.port)})  # fmt: skip
    rec.start()
    try:
        wait_until(lambda: bus.on(Topics.recorder_heartbeat(PREFIX, "det")), 60, "the recorder's heartbeat", rec)
        t = Topics(PREFIX, "door-cam")
        now = time.time()
        done = _start(node="door-cam", started=round(now - 30, 3), snapshot=True)
        still = _start(node="door-cam", rule="bird", started=round(now - 5, 3))
        for d in (done, _end(done), _end(done), still):  # the end twice: a QoS 1 redelivery
            bus.publish(t.detections, d.to_bytes(), qos=1)
        bus.publish(f"{t.detections}/snapshot/{done.id}", b"\xff\xd8 a JPEG", qos=1)  # not recorded
        env = clean_env(EDGE_STATE_DIR=rec.settings["EDGE_STATE_DIR"])

        def listed() -> list[dict[str, Any]] | None:
            out = run_cli("history", "detections", "--since", "10m", "--json", env=env)
            if out.returncode != 0:
                assert "run `edge-node record` first" in out.stderr, out.stderr  # the file is not there yet
                return None
            found: list[dict[str, Any]] = json.loads(out.stdout)
            return found if len(found) == 2 and not found[1]["open"] else None

        found = wait_until(listed, 30, "history detections to show both detections", rec)
        assert [(d["rule"], d["open"]) for d in found] == [("bird", True), ("cat", False)]
        assert found[1]["id"] == done.id and found[1]["duration_s"] == 4.0 and found[1]["snapshot"] is True
        table = run_cli("history", "detections", "--node", "door-cam", "--rule", "cat", env=env)
        assert table.returncode == 0, table.stderr
        assert "door-cam" in table.stdout and "4.0 s" in table.stdout and "bird" not in table.stdout

        def beat() -> RecorderHeartbeat | None:
            last = RecorderHeartbeat.model_validate_json(bus.on(Topics.recorder_heartbeat(PREFIX, "det"))[-1].payload)
            return last if last.rows_written + last.duplicates == 4 else None  # every message, one way or the other

        hb = wait_until(beat, 30, "the heartbeat to count the four detection messages", rec)
        # the start, its end, the open start written, the end's copy skipped, however the batches fell; the
        # snapshot never reached the recorder (no bad_* count)
        assert (hb.rows_written, hb.duplicates, hb.dropped) == (3, 1, {})
    finally:
        rec.stop()
