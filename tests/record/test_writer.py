"""The batching writer on a real SQLite file: acknowledgements only after the commit, a bounded queue whose
drops are counted, rows outside retention refused, and an unusable database reported at start."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_node.config import RecordConfig
from edge_node.errors import RecordError
from edge_node.fleet.simnode import SimNode
from edge_node.record.rows import Row, to_row
from edge_node.record.sqlite import SqliteStore
from edge_node.record.store import Store
from edge_node.record.writer import ACK_BATCH, BatchWriter


def _rows(n: int, ts: float | None = None) -> list[Row]:
    sim = SimNode("w1", rng=random.Random(0))
    out = []
    for i in range(n):
        row = to_row("w1", "predictions", sim.prediction(ts=(ts or time.time()) + i / 1000), time.time())
        assert row is not None
        out.append(row)
    return out


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    finally:
        conn.close()


def test_acknowledgements_come_after_the_rows_are_committed(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    seen_at_ack: list[int] = []
    done = threading.Event()

    def ack() -> None:
        seen_at_ack.append(_count(db))
        if len(seen_at_ack) == 50:
            done.set()

    writer = BatchWriter(lambda: SqliteStore(db), RecordConfig(commit_interval=0.1, batch_rows=10))
    writer.start()
    try:
        for row in _rows(50):
            writer.put(row, ack)
        assert done.wait(30)
    finally:
        writer.stop()
    # each acknowledgement saw its own batch (at least) in the database, read by another connection
    assert seen_at_ack[0] >= 10 and seen_at_ack[-1] == 50
    stats = writer.stats()
    assert stats.rows_written == 50 and stats.batches >= 5 and stats.lag_p50_s is not None


def test_rows_to_acknowledge_do_not_wait_out_the_commit_interval(tmp_path: Path) -> None:
    """A broker sends a consumer only a few unacknowledged QoS 1 messages at a time (mosquitto: 20 to an MQTT
    3.1.1 client); held for a one-minute commit interval, they would crawl. ACK_BATCH of them commit at once,
    while rows without an acknowledgement still wait for the interval (or a full batch)."""
    acked = threading.Event()
    writer = BatchWriter(lambda: SqliteStore(tmp_path / "h.db"), RecordConfig(commit_interval=60, batch_rows=2000))
    writer.start()
    try:
        rows = _rows(2 * ACK_BATCH)
        for row in rows[:ACK_BATCH]:
            writer.put(row)  # no acknowledgement: these may wait
        assert writer.stats().batches == 0
        for i, row in enumerate(rows[ACK_BATCH:]):
            writer.put(row, acked.set if i == ACK_BATCH - 1 else lambda: None)
        assert acked.wait(20), "the acknowledged rows waited for the 60 s commit interval"
        assert _count(tmp_path / "h.db") == 2 * ACK_BATCH  # the batch took what was queued before them too
    finally:
        writer.stop()


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = BatchWriter(lambda: SqliteStore(tmp_path / "h.db"), RecordConfig(max_queue=100))
    accepted = [writer.put(row) for row in _rows(130)]  # the thread is not started: nothing is taken
    assert accepted.count(False) == 30 and writer.stats().dropped["queue_full"] == 30
    writer.start()
    writer.stop()  # what was queued is committed on the way out
    assert _count(tmp_path / "h.db") == 100


def test_rows_outside_retention_are_counted_not_written(tmp_path: Path) -> None:
    writer = BatchWriter(lambda: SqliteStore(tmp_path / "h.db"), RecordConfig(keep_days=1, commit_interval=0.1))
    writer.start()
    for row in _rows(5, ts=time.time() - 3 * 86400) + _rows(5, ts=time.time() + 3 * 86400) + _rows(3):
        writer.put(row)
    writer.stop()
    assert writer.stats().dropped["out_of_range"] == 10 and _count(tmp_path / "h.db") == 3


def test_a_database_that_cannot_open_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()

    def opener() -> Store:
        return SqliteStore(tmp_path / "dir.db")

    with pytest.raises(RecordError, match="cannot open the history database"):
        BatchWriter(opener, RecordConfig()).start()
