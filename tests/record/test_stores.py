"""Both stores on real databases (a file for SQLite, a fresh PostgreSQL database per test): duplicates
skipped by the keys, migrations, retention, and every ``history`` question answered from what was written."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from edge_node.errors import RecordError
from edge_node.fleet.simnode import SimNode
from edge_node.record.postgres import PostgresStore, partition_name
from edge_node.record.query import History, TimeRange
from edge_node.record.rows import Row, to_row
from edge_node.record.sqlite import SqliteStore
from edge_node.record.store import Store

NOW = time.time()


def _fleet_rows(nodes: int = 3, seconds: int = 120) -> list[Row]:
    out = []
    for n in range(nodes):
        sim = SimNode(f"node-{n}", rng=random.Random(n))
        for s in range(seconds):
            ts = NOW - seconds + s
            row = to_row(sim.node_id, "predictions", sim.prediction(ts=ts), ts + 0.01)
            assert row is not None
            out.append(row)
            if s % 10 == 0:
                hb = to_row(sim.node_id, "heartbeat", sim.heartbeat(ts=ts), ts + 0.01)
                assert hb is not None
                out.append(hb)
    return out


def _row(node: str, leaf: str, payload: bytes, received: float) -> Row:
    row = to_row(node, leaf, payload, received)
    assert row is not None
    return row


def test_a_row_written_twice_is_kept_once(store: Store) -> None:
    rows = _fleet_rows()
    assert store.write(rows) == len(rows)
    assert store.write(rows[:100] + rows[-5:]) == 0
    (count,) = store.query("SELECT count(*) FROM predictions")[0]
    (pairs,) = store.query("SELECT count(*) FROM (SELECT DISTINCT node, seq FROM predictions) x")[0]
    assert count == pairs == 3 * 120


def test_events_are_unique_by_command_id(store: Store) -> None:
    event = b'{"id":"cmd-7","cmd":"set_mode","ok":true,"ts":%.3f}' % (NOW - 5)
    assert store.write([_row("n1", "events", event, NOW)]) == 1
    assert store.write([_row("n1", "events", event, NOW + 1)]) == 0  # QoS 1 sent again: same id and time
    other = b'{"id":"cmd-8","cmd":"set_mode","ok":true,"ts":%.3f}' % (NOW - 5)
    assert store.write([_row("n1", "events", other, NOW)]) == 1


def test_history_answers_for_a_node_and_for_the_fleet(store: Store) -> None:
    store.write(_fleet_rows())
    store.write(
        [
            _row("node-1", "status", b"online", NOW - 300),
            _row("node-1", "status", b"offline", NOW - 60),
            _row("node-1", "status", b"online", NOW - 30),
            _row("node-1", "events", b'{"id":"c1","cmd":"ping","ok":true,"ts":%.3f}' % (NOW - 20), NOW),
            _row("node-1", "ota", b'{"node":"node-1","ts":%.3f,"phase":"active","version":"2.0"}' % (NOW - 10), NOW),
        ]
    )
    h = History(store)
    one = TimeRange(NOW - 200, NOW + 1, "node-1")
    labels = h.label_counts(one)
    assert sum(n for _, n in labels) == 120 and labels == sorted(labels, key=lambda x: (-x[1], x[0]))
    fleet = TimeRange(NOW - 200, NOW + 1)
    assert sum(n for _, n in h.label_counts(fleet)) == 360
    assert sum(n for _, n in h.hourly_counts(fleet)) == 360
    assert sum(n for _, _, n in h.hourly_labels(one)) == 120
    series = h.series(one)
    assert series and all(p["fps"] is not None and p["rss_mb"] is not None for p in series)
    assert [n["node"] for n in h.nodes(fleet)] == ["node-0", "node-1", "node-2"]
    offline = [s for s in h.spans(one) if not s.online]
    assert len(offline) == 1 and offline[0].seconds == pytest.approx(30, abs=0.01)
    assert [e["id"] for e in h.events(one)] == ["c1"] and h.events(one)[0]["ok"] is True
    assert [(o["phase"], o["version"]) for o in h.ota(one)] == [("active", "2.0")]
    report = h.report(one)
    assert set(report) >= {"labels", "series", "spans", "events", "ota", "nodes"}


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "h.db").close()
    conn = sqlite3.connect(tmp_path / "h.db")
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(RecordError, match="upgrade edge-node"):
        SqliteStore(tmp_path / "h.db")


def test_sqlite_is_in_wal_mode_and_migrates_once(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "h.db").close()
    s = SqliteStore(tmp_path / "h.db")
    try:
        assert s.query("PRAGMA journal_mode") == [("wal",)]
        assert s.query("SELECT version, name FROM schema_migrations ORDER BY version") == [
            (1, "initial"),
            (2, "detections"),
        ]
    finally:
        s.close()


def test_sqlite_retention_deletes_old_rows(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "h.db")
    try:
        s.write(_fleet_rows(nodes=1, seconds=100))
        assert s.purge(NOW - 50) > 0
        (oldest,) = s.query("SELECT min(ts) FROM predictions")[0]
        assert oldest >= NOW - 50
    finally:
        s.close()


def test_postgres_partitions_by_day_and_retention_drops_them(pg_fresh: str) -> None:
    s = PostgresStore(pg_fresh)
    try:
        day = int(NOW // 86400)
        old = NOW - 5 * 86400
        s.write([_row("n1", "status", b"online", old), _row("n1", "status", b"online", NOW)])
        names = [name for name, _ in s.partitions()]
        assert partition_name("statuses", day - 5) in names and partition_name("predictions", day) in names
        assert partition_name("statuses", day - 5) == "statuses_p" + time.strftime("%Y%m%d", time.gmtime(old))
        dropped = s.purge(NOW - 2 * 86400)
        assert dropped == 7  # one day of each of the seven tables
        assert s.query("SELECT count(*) FROM statuses") == [(1,)]
        assert all(d >= day - 2 for _, d in s.partitions())
        s.write([_row("n1", "status", b"offline", old)])  # a dropped day is made again when needed
        assert s.query("SELECT count(*) FROM statuses") == [(2,)]
    finally:
        s.close()


def test_postgres_stores_real_timestamps_for_sql_users(pg_fresh: str) -> None:
    s = PostgresStore(pg_fresh)
    try:
        s.write([_row("n1", "status", b"online", 1_700_000_000.25)])
    finally:
        s.close()
    with psycopg.connect(pg_fresh) as conn:
        (ts,) = conn.execute("SELECT ts AT TIME ZONE 'UTC' FROM statuses").fetchone() or (None,)
        assert str(ts) == "2023-11-14 22:13:20.250000"
        (version,) = conn.execute("SELECT max(version) FROM schema_migrations").fetchone() or (None,)
        assert version == 2


def test_two_postgres_stores_migrate_the_same_database_once(pg_fresh: str) -> None:
    a, b = PostgresStore(pg_fresh), PostgresStore(pg_fresh)
    try:
        rows = _fleet_rows(nodes=1, seconds=20)
        assert a.write(rows) + b.write(rows) == len(rows)
        assert a.query("SELECT count(*) FROM schema_migrations") == [(2,)]
    finally:
        a.close()
        b.close()


def test_postgres_says_what_to_check_when_it_cannot_connect() -> None:
    with pytest.raises(RecordError, match="EDGE_RECORD__DSN"):
        PostgresStore("host=127.0.0.1 port=1 user=postgres dbname=none", connect_timeout=2)


def test_a_readers_statement_timeout_cancels_a_query_that_would_hold_its_thread(pg_fresh: str) -> None:
    """The dashboard's reader answers from one thread: a query stuck behind a lock must end, not wait forever."""
    reader = PostgresStore(pg_fresh, statement_timeout=0.5)
    try:
        with psycopg.connect(pg_fresh) as holder:
            holder.execute(b"LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")  # held until the rollback
            t0 = time.monotonic()
            with pytest.raises(RecordError, match="statement timeout"):
                History(reader).label_counts(TimeRange(NOW - 3600, NOW, "node-0"))
            assert time.monotonic() - t0 < 10
            holder.rollback()
        assert History(reader).label_counts(TimeRange(NOW - 3600, NOW, "node-0")) == []  # the connection lives on
    finally:
        reader.close()
