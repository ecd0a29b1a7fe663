"""The SQLite history (the default): one file in WAL mode, so ``history`` reads while the recorder writes."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_node.errors import RecordError
from edge_node.record.migrations import SQLITE, Migration, latest
from edge_node.record.rows import COLUMNS, DETECTION_UPSERT, Row, fold
from edge_node.record.store import Dialect

__all__ = ["SqliteStore", "migrate"]


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = SQLITE) -> int:
    """Apply what is missing, each migration in its own transaction; returns the version now."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied REAL)")
    conn.commit()
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    if done and max(done) > latest(migrations):
        raise RecordError(
            f"the history database has schema version {max(done)}, newer than this edge-node knows "
            f"({latest(migrations)}): upgrade edge-node, or point EDGE_RECORD__PATH at another file"
        )
    for m in migrations:
        if m.version in done:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in m.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (m.version, m.name, time.time()))
            conn.commit()
        except sqlite3.Error:
            conn.rollback()
            raise
    return latest(migrations)


class SqliteStore:
    dialect = Dialect("sqlite", "?")

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.where = str(path)
        if not create and not path.exists():
            raise RecordError(f"no history at {path}: run `edge-node record` first, or set EDGE_RECORD__PATH")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT), one per batch
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            migrate(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise RecordError(f"cannot open the history database {path}: {exc}") from exc
        self._sql = {
            table: f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            for table, cols in COLUMNS.items()
        }
        cols = COLUMNS["detections"]
        self._sql["detections"] = (
            f"INSERT INTO detections ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) {DETECTION_UPSERT}"
        )

    def write(self, rows: Sequence[Row]) -> int:
        by_table: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        folded, merged = fold(rows)
        for row in folded:
            by_table[row.table].append(row.values)
        before = self._conn.total_changes
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for table, values in by_table.items():
                self._conn.executemany(self._sql[table], values)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise RecordError(f"cannot write to {self.where}: {exc}") from exc
        return self._conn.total_changes - before + merged

    def purge(self, cutoff: float) -> int:
        deleted = 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for table, cols in COLUMNS.items():  # a table's first column is its time
                deleted += self._conn.execute(f"DELETE FROM {table} WHERE {cols[0]} < ?", (cutoff,)).rowcount
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise RecordError(f"cannot purge {self.where}: {exc}") from exc
        return deleted

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise RecordError(f"cannot read {self.where}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
