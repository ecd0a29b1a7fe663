"""A fresh PostgreSQL database per test run on the machine's server (CI: PostgreSQL 15 on 127.0.0.1:5432,
trust auth), dropped afterwards. ``GHOSTPI_TEST_PG`` names another server's admin conninfo."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

__all__ = ["ADMIN_DSN", "fresh_database"]

ADMIN_DSN = os.environ.get("GHOSTPI_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")


@contextmanager
def fresh_database(prefix: str = "ghostpi_test") -> Iterator[str]:
    """The conninfo of a new, empty database; dropped (its sessions ended) on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"no PostgreSQL at {ADMIN_DSN!r} ({exc}): the history tests need one (GHOSTPI_TEST_PG names another)"
        ) from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
        try:
            yield psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
