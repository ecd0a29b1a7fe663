"""The PostgreSQL history (``EDGE_RECORD__DSN``): psycopg 3, COPY into a session's staging tables, then one
``INSERT ... ON CONFLICT DO NOTHING`` per table, so a row another recorder already wrote is skipped (detections:
``DO UPDATE``, an end completes its start's row).

Every table is partitioned by day; the partitions a batch needs are made on the way (under an advisory lock,
since several recorders may meet the same new day), and retention drops whole partitions.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import psycopg

from edge_node.errors import RecordError
from edge_node.record.migrations import PARTITIONED, POSTGRES, Migration, latest
from edge_node.record.rows import COLUMNS, DETECTION_UPSERT, Row, fold
from edge_node.record.store import Dialect

__all__ = ["PostgresStore", "partition_name"]

_LOCK = 0x6770_7265_6364  # pg_advisory_xact_lock key of migrations and partition making ("gprecd")
_DAY = 86400
_PART = re.compile(r"^(?P<table>[a-z]+)_p(?P<day>\d{8})$")
_TIMES = ("ts", "received", "started", "ended", "best_ts")  # timestamptz columns, epoch seconds in staging


def partition_name(table: str, day: int) -> str:
    """``<table>_pYYYYMMDD`` for the day ``day`` (days since the epoch, UTC)."""
    return f"{table}_p{dt.datetime.fromtimestamp(day * _DAY, dt.UTC):%Y%m%d}"


def _bound(day: int) -> str:
    return dt.datetime.fromtimestamp(day * _DAY, dt.UTC).isoformat()


class PostgresStore:
    dialect = Dialect("postgres", "%s")

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0, statement_timeout: float | None = None) -> None:
        """``statement_timeout``: a reader's bound on each statement (the dashboard's), so that a slow query is
        cancelled by the server instead of holding the one thread that owns the connection."""
        try:
            self._conn = psycopg.connect(dsn, connect_timeout=int(max(1, connect_timeout)))
            self.where = f"PostgreSQL {self._conn.info.host}:{self._conn.info.port}/{self._conn.info.dbname}"
            self._conn.execute("SET TIME ZONE 'UTC'")
            if statement_timeout is not None:
                self._conn.execute(f"SET statement_timeout = {max(1, int(statement_timeout * 1000))}".encode())
            self._conn.commit()
            self.migrate()
            self._staging()
        except psycopg.Error as exc:
            raise RecordError(
                f"cannot use the PostgreSQL history ({exc}); check EDGE_RECORD__DSN, that the server runs and "
                "that the user may create tables in the database"
            ) from exc
        self._days: set[int] = set()

    def migrate(self, migrations: tuple[Migration, ...] = POSTGRES) -> int:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text, "
                "applied timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations").fetchall()}
            if done and max(done) > latest(migrations):
                raise RecordError(
                    f"the history database has schema version {max(done)}, newer than this edge-node knows "
                    f"({latest(migrations)}): upgrade edge-node"
                )
            for m in migrations:
                if m.version in done:
                    continue
                for statement in m.statements:
                    self._conn.execute(statement.encode())
                self._conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
        return latest(migrations)

    def _staging(self) -> None:
        """One temporary table per table, times as epoch seconds, emptied at each commit."""
        with self._conn.transaction():
            for table in COLUMNS:
                stage = f"_in_{table}"
                self._conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                    f"SELECT {', '.join(COLUMNS[table])} FROM {table} WITH NO DATA"
                )
                for col in (c for c in COLUMNS[table] if c in _TIMES):
                    self._conn.execute(f"ALTER TABLE {stage} ALTER COLUMN {col} TYPE float8 USING NULL")
        self._insert = {
            table: f"INSERT INTO {table} ({', '.join(cols)}) SELECT "
            + ", ".join(f"to_timestamp({c})" if c in _TIMES else c for c in cols)
            + f" FROM _in_{table} "
            + (DETECTION_UPSERT if table == "detections" else "ON CONFLICT DO NOTHING")
            for table, cols in COLUMNS.items()
        }

    def ensure_days(self, days: set[int]) -> None:
        """Make the day partitions of every table that do not exist yet."""
        missing = days - self._days
        if not missing:
            return
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            for day in sorted(missing):
                for table in PARTITIONED:
                    self._conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} PARTITION OF {table} "
                        f"FOR VALUES FROM ('{_bound(day)}') TO ('{_bound(day + 1)}')"
                    )
        self._days |= missing

    def write(self, rows: Sequence[Row]) -> int:
        rows, inserted = fold(rows)  # an end folded into its start counts as written, as in two batches
        by_table: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in rows:
            by_table[row.table].append(row.values)
        try:
            self.ensure_days({int(row.values[0] // _DAY) for row in rows})
            with self._conn.transaction(), self._conn.cursor() as cur:
                for table, values in by_table.items():
                    with cur.copy(f"COPY _in_{table} ({', '.join(COLUMNS[table])}) FROM STDIN") as copy:
                        for value in values:
                            copy.write_row(value)
                    cur.execute(self._insert[table].encode())
                    inserted += max(cur.rowcount, 0)
        except psycopg.Error as exc:
            self._days.clear()  # a partition may have been dropped under us: look again next time
            raise RecordError(f"cannot write to {self.where}: {exc}") from exc
        return inserted

    def partitions(self) -> list[tuple[str, int]]:
        """(partition, day) of every day partition of the history's tables."""
        found = self._conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(%s)",
            (list(PARTITIONED),),
        ).fetchall()
        self._conn.commit()
        out = []
        for (name,) in found:
            if (m := _PART.match(name)) is not None:
                day = dt.datetime.strptime(m["day"], "%Y%m%d").replace(tzinfo=dt.UTC)
                out.append((name, int(day.timestamp()) // _DAY))
        return sorted(out)

    def purge(self, cutoff: float) -> int:
        """Drop the partitions whose whole day lies before ``cutoff``."""
        try:
            old = [name for name, day in self.partitions() if (day + 1) * _DAY <= cutoff]
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                for name in old:
                    self._conn.execute(f"DROP TABLE IF EXISTS {name}".encode())
        except psycopg.Error as exc:
            raise RecordError(f"cannot purge {self.where}: {exc}") from exc
        self._days = {d for d in self._days if (d + 1) * _DAY > cutoff}
        return len(old)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql.encode(), tuple(params))
                rows = cur.fetchall()
            self._conn.commit()
            return rows
        except psycopg.Error as exc:
            self._conn.rollback()
            raise RecordError(f"cannot read {self.where}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
