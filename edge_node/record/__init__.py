"""The fleet's history: ``edge-node record`` writes what the brokers carry to SQLite or PostgreSQL, and
``edge-node history`` asks it (extra ``record``; docs/history.md). Nothing here runs on a node."""

from __future__ import annotations

__all__: list[str] = []
