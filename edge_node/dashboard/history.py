"""The timeline beyond what this dashboard has seen: detections from the recorder's history (docs/history.md).

The database is the recorder's (``EDGE_RECORD__DSN``, or its SQLite file), as ``edge-node history`` reads it;
the dashboard only queries it. One worker thread owns
the connection: it opens the store, answers every query and closes it (a SQLite connection belongs to the
thread that made it), so the event loop never waits on the database, and a query that does not answer within
its timeout leaves the timeline with what the dashboard saw itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_node.dashboard.detections import Query
from edge_node.errors import RecordError
from edge_node.fleet.decode import JsonDict
from edge_node.record.query import History, TimeRange
from edge_node.record.store import Store

__all__ = ["TimelineHistory", "merged"]

log = logging.getLogger(__name__)

_FAR = 4_102_444_800.0  # 2100-01-01: "until" when the request names none


class TimelineHistory:
    """Detections from the recorder's database, for the dashboard's ``/api/detections``."""

    def __init__(self, open_store: Callable[[], Store], where: str, timeout: float = 5.0) -> None:
        self.where = where  # for messages: the database's place (never its password)
        self.timeout = timeout
        self.failures = 0  # queries that failed or timed out since the start
        self._open = open_store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-history")
        self._store: Store | None = None

    async def start(self) -> None:
        """Open the database in the worker; a missing or unreadable one fails the start with what to do."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._pool, self._open_in_worker), 30.0)
        except TimeoutError as exc:
            raise RecordError(f"the history database at {self.where} did not open within 30 s") from exc

    def _open_in_worker(self) -> None:
        self._store = self._open()

    async def detections(self, q: Query) -> list[JsonDict] | None:
        """The recorder's detections matching ``q``, newest first; None (logged, counted) when it did not answer."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, self._query, q), self.timeout)
        except (TimeoutError, RecordError) as exc:
            self.failures += 1
            log.warning("history at %s did not answer the timeline (%s): showing what this dashboard saw", self.where,
                        exc or "timed out")  # fmt: skip
            return None

    def _query(self, q: Query) -> list[JsonDict]:
        if self._store is None:
            raise RecordError("the history database is not open")
        r = TimeRange(q.since if q.since is not None else 0.0, q.until if q.until is not None else _FAR)
        rows: list[dict[str, Any]] = History(self._store).detections(r, node=q.node, rule=q.rule, limit=q.limit)
        return rows

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close_in_worker)
        self._pool.shutdown(wait=False)

    def _close_in_worker(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def merged(live: JsonDict, past: list[JsonDict] | None, limit: int) -> JsonDict:
    """The dashboard's answer with the recorder's detections added: a detection both know is shown as the
    dashboard saw it (it may hold its thumbnail); the recorder's own are marked ``"source": "history"``."""
    shown = list(live["detections"])
    seen = {(d["node"], d["id"]) for d in shown}
    extra = []
    for row in past or []:
        if (row["node"], row["id"]) in seen:
            continue
        view = {k: v for k, v in row.items() if k != "received"}
        view["snapshot"] = False  # the recorder keeps no images: no thumbnail to fetch
        view["source"] = "history"
        extra.append(view)
    every = sorted(shown + extra, key=lambda d: (d.get("started") or 0.0, d["node"], d["id"]), reverse=True)
    out = dict(live)
    out["detections"] = every[:limit]
    out["matching"] = int(live["matching"]) + len(extra)
    out["history"] = "unanswered" if past is None else "ok"
    return out
