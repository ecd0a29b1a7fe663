"""What the writer and ``history`` need from a database, and opening the configured one.

Both stores speak epoch seconds (floats) at this interface; PostgreSQL keeps ``timestamptz`` columns and
converts in SQL (``Dialect``), so Grafana reads real timestamps there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_node.config import RecordConfig
from edge_node.record.rows import Row

__all__ = ["Dialect", "Store", "default_path", "open_store"]


@dataclass(frozen=True, slots=True)
class Dialect:
    """The few SQL spellings that differ: a parameter, a time parameter, a time column read as epoch seconds,
    and a time column cut to the start of its bucket of ``seconds``."""

    name: str
    ph: str

    def ts_in(self) -> str:
        return "to_timestamp(%s)" if self.name == "postgres" else "?"

    def ts_out(self, column: str = "ts") -> str:
        return f"extract(epoch from {column})::float8" if self.name == "postgres" else column

    def bucket(self, seconds: int, column: str = "ts") -> str:
        if self.name == "postgres":
            return f"(floor(extract(epoch from {column}) / {seconds}) * {seconds})::float8"
        return f"(cast({column} / {seconds} as integer) * {seconds})"


class Store(Protocol):
    dialect: Dialect
    where: str  # for messages: the file or the database

    def write(self, rows: Sequence[Row]) -> int:
        """Insert in one transaction; rows already there (same key) are skipped. Returns the rows inserted."""

    def purge(self, cutoff: float) -> int:
        """Drop what is older than ``cutoff`` (epoch seconds); returns partitions dropped or rows deleted."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


def default_path(state_dir: Path) -> Path:
    return state_dir / "history.db"


def open_store(
    cfg: RecordConfig, state_dir: Path, *, create: bool = True, statement_timeout: float | None = None
) -> Store:
    """PostgreSQL when ``EDGE_RECORD__DSN`` is set, else SQLite; migrated to this program's schema.
    ``statement_timeout`` bounds each PostgreSQL statement (SQLite's are local)."""
    dsn = cfg.resolved_dsn()
    if dsn:
        from edge_node.record.postgres import PostgresStore

        return PostgresStore(dsn, statement_timeout=statement_timeout)
    from edge_node.record.sqlite import SqliteStore

    return SqliteStore(cfg.path or default_path(state_dir), create=create)
