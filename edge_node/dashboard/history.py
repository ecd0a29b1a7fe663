"""What this dashboard has not seen itself, from the recorder's history (docs/history.md): the timeline's
older detections, and a node's chart and label counts over 1 h, 24 h or 7 days.

The database is the recorder's (``EDGE_RECORD__DSN``, or its SQLite file), as ``edge-node history`` reads it;
the dashboard only queries it. One worker thread owns
the connection: it opens the store, answers every query and closes it (a SQLite connection belongs to the
thread that made it), so the event loop never waits on the database, and a query that does not answer within
its timeout leaves the page with what the dashboard saw itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import BaseModel

from edge_node.dashboard.detections import Query
from edge_node.errors import RecordError
from edge_node.fleet.decode import JsonDict
from edge_node.record.query import History, TimeRange
from edge_node.record.store import Store

__all__ = [
    "POINTS",
    "QUERY_TIMEOUT",
    "RANGES",
    "TOP_LABELS",
    "HourCounts",
    "NodeHistory",
    "RecorderHistory",
    "SeriesPoint",
    "merged",
    "node_history",
]

log = logging.getLogger(__name__)

_FAR = 4_102_444_800.0  # 2100-01-01: "until" when the request names none
RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}  # what a card's chart can show beyond its live minutes
POINTS = 120  # chart points at most per range: the answer's size does not grow with the fleet's rate
TOP_LABELS = 8  # labels counted by hour; the rest are summed as "other"
_T = TypeVar("_T")


class SeriesPoint(BaseModel):
    """A node's heartbeat averages over one bucket that starts at ``ts`` (None: not reported)."""

    ts: float
    fps: float | None
    inference_ms: float | None
    cpu_temp_c: float | None
    rss_mb: float | None


class HourCounts(BaseModel):
    """Predictions in the hour that starts at ``ts``: per top label (in ``NodeHistory.labels``' order), the
    other labels together, and all."""

    ts: float
    counts: list[int]
    other: int
    total: int


class NodeHistory(BaseModel):
    """``GET /api/nodes/<node>/history``: a node's chart over ``range`` and its label counts by hour."""

    node: str
    range: str
    since: float  # the first bucket's start
    until: float
    step: int  # seconds per chart point
    series: list[SeriesPoint]
    labels: list[str]  # the range's most frequent labels, most frequent first
    hours_since: float  # the first hour counted (whole hours, so its count is complete)
    hourly_labels: list[HourCounts]
    source: str = "history"


def node_history(history: History, node: str, range_name: str, now: float) -> NodeHistory:
    """A node's chart (``POINTS`` buckets at most, aligned to their size) and hourly label counts (each hour
    with predictions from the range's first whole hour, ``TOP_LABELS`` labels) over the last ``range_name``;
    runs where the store lives."""
    seconds = RANGES[range_name]
    step = TimeRange(now - seconds, now).bucket(POINTS)
    buckets = math.ceil(seconds / step)
    since = (math.floor(now / step) - buckets + 1) * step
    points = history.series(TimeRange(since, now, node), step=step)
    series = [SeriesPoint.model_validate(p) for p in points]  # its "nodes" (1) left out
    hours_since = math.floor((now - seconds) / 3600) * 3600
    hours = TimeRange(hours_since, now, node)
    top = [label for label, _ in history.label_counts(hours, TOP_LABELS)]
    totals = history.hourly_counts(hours)
    by_hour: dict[float, list[int]] = {ts: [0] * len(top) for ts, _ in totals}
    column = {label: i for i, label in enumerate(top)}
    for ts, label, n in history.hourly_labels(hours, top):
        by_hour.setdefault(ts, [0] * len(top))[column[label]] = n
    rows = [HourCounts(ts=ts, counts=by_hour[ts], other=total - sum(by_hour[ts]), total=total) for ts, total in totals]
    return NodeHistory(
        node=node, range=range_name, since=float(since), until=now, step=step, series=series, labels=top,
        hours_since=float(hours_since), hourly_labels=rows,
    )  # fmt: skip


QUERY_TIMEOUT = 5.0  # seconds a request waits for the database; PostgreSQL also cancels a statement after it


class RecorderHistory:
    """The recorder's database, for the dashboard: ``/api/detections`` and ``/api/nodes/<node>/history``."""

    def __init__(self, open_store: Callable[[], Store], where: str, timeout: float = QUERY_TIMEOUT) -> None:
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

    async def _ask(self, what: str, job: Callable[[History], _T]) -> _T | None:
        """``job`` run in the worker on the open store; None (logged, counted) when it failed or did not
        answer within the timeout (a job still waiting its turn is cancelled)."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, self._run, job), self.timeout)
        except (TimeoutError, RecordError) as exc:
            self.failures += 1
            log.warning("history at %s did not answer %s (%s): showing what this dashboard saw", self.where, what,
                        exc or f"no answer within {self.timeout:g} s")  # fmt: skip
            return None

    def _run(self, job: Callable[[History], _T]) -> _T:
        if self._store is None:
            raise RecordError("the history database is not open")
        return job(History(self._store))

    async def detections(self, q: Query) -> list[JsonDict] | None:
        """The recorder's detections matching ``q``, newest first; None (logged, counted) when it did not answer."""
        r = TimeRange(q.since if q.since is not None else 0.0, q.until if q.until is not None else _FAR)

        def job(h: History) -> list[JsonDict]:
            rows: list[dict[str, Any]] = h.detections(r, node=q.node, rule=q.rule, limit=q.limit)
            return rows

        return await self._ask("the timeline", job)

    async def node(self, node: str, range_name: str, now: float) -> NodeHistory | None:
        """A node's chart and hourly label counts over the last ``range_name`` (a key of RANGES); None when
        the database did not answer."""
        return await self._ask(f"{node}'s chart", lambda h: node_history(h, node, range_name, now))

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
