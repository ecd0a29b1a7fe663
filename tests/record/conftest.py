from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.config import RecordConfig
from edge_node.record.postgres import PostgresStore
from edge_node.record.sqlite import SqliteStore
from edge_node.record.store import Store
from tests.support.postgres import fresh_database


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database for this module's tests, dropped after."""
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def pg_fresh() -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store, empty."""
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "history.db")
        yield s
        s.close()
        return
    with fresh_database() as dsn:
        s = PostgresStore(dsn)
        yield s
        s.close()


@pytest.fixture
def record_cfg() -> RecordConfig:
    return RecordConfig(commit_interval=0.2, heartbeat_interval=0.5)
