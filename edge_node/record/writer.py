"""The batching writer: one thread owns the store, takes rows from the ingest side and commits them in
batches (``EDGE_RECORD__BATCH_ROWS`` rows or ``EDGE_RECORD__COMMIT_INTERVAL`` seconds, whichever comes first).

The queue between them is bounded: rows beyond ``EDGE_RECORD__MAX_QUEUE`` are dropped and counted, never
allowed to grow memory without end while the database is away. A failed write keeps its batch and retries
with backoff. A row may carry an acknowledgement (an MQTT QoS 1 message, a JetStream message), called only
after its commit. Brokers hold back what a consumer has not acknowledged (mosquitto sends an MQTT 3.1.1 client
20 QoS 1 messages at a time), so rows with an acknowledgement do not wait out the commit interval once
``ACK_BATCH`` of them are queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_node.config import RecordConfig
from edge_node.errors import RecordError
from edge_node.record.rows import Row
from edge_node.record.store import Store

__all__ = ["ACK_BATCH", "Ack", "BatchWriter", "WriterStats", "in_range", "percentile"]

log = logging.getLogger(__name__)

Ack = Callable[[], None]
_FUTURE = 86400.0  # rows stamped more than a day ahead are refused (a node's clock is wrong)
_PURGE_EVERY = 3600.0
_LAGS = 20_000  # recent publish-to-commit lags kept for p50/p95
ACK_BATCH = 10  # acknowledgements waiting that start a commit: half of mosquitto's default in-flight window


def _ack_all(acks: list[Ack]) -> None:
    for ack in acks:
        ack()


def in_range(ts: float, now: float, keep_days: int) -> bool:
    """A row is kept when its time lies within retention and not far in the future."""
    return now - keep_days * 86400.0 < ts < now + _FUTURE


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class WriterStats:
    rows_written: int = 0
    duplicates: int = 0
    batches: int = 0
    write_errors: int = 0
    queued: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> rows
    lag_p50_s: float | None = None
    lag_p95_s: float | None = None


class BatchWriter:
    """Owns the store (opened in its thread) and the thread; ``put`` is safe from any thread."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        cfg: RecordConfig,
        *,
        on_acks: Callable[[list[Ack]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open = open_store
        self._cfg = cfg
        self._on_acks = on_acks or _ack_all
        self._clock = clock
        self._queue: deque[tuple[Row, Ack | None]] = deque()
        self._unacked = 0  # rows in the queue that carry an acknowledgement
        self._cond = threading.Condition()
        self._stopping = False
        self._stats = WriterStats()
        self._lags: deque[float] = deque(maxlen=_LAGS)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # --- the ingest side ---------------------------------------------------------------------------------

    def put(self, row: Row, ack: Ack | None = None) -> bool:
        """Queue a row; False (and counted) when the queue is full. An unacknowledged row is then sent again
        by its broker, so only rows without ``ack`` are lost."""
        with self._cond:
            if len(self._queue) >= self._cfg.max_queue:
                self._stats.dropped["queue_full" if ack is None else "deferred"] += 1
                return False
            self._queue.append((row, ack))
            self._unacked += ack is not None
            if self._due():
                self._cond.notify()
        return True

    def _due(self) -> bool:
        """A batch is ready without waiting out the commit interval (called under the lock)."""
        return len(self._queue) >= self._cfg.batch_rows or self._unacked >= ACK_BATCH

    def has_room(self) -> bool:
        """The queue is at most half full: messages a broker sends again would find a place."""
        with self._cond:
            return len(self._queue) <= self._cfg.max_queue // 2

    def count(self, reason: str) -> None:
        """A message the ingest side could not turn into a row (bad payload, unknown topic)."""
        with self._cond:
            self._stats.dropped[reason] += 1

    def stats(self) -> WriterStats:
        with self._cond:
            lags = list(self._lags)
            s = self._stats
            return WriterStats(
                s.rows_written, s.duplicates, s.batches, s.write_errors, len(self._queue), Counter(s.dropped),
                percentile(lags, 0.5), percentile(lags, 0.95),
            )  # fmt: skip

    # --- the thread -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the thread and wait until the store is open and migrated; its error is raised here."""
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RecordError(f"the history database did not open within {timeout:.0f} s")
        if self._failure is not None:
            raise self._failure

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then close the store."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the history writer did not finish within %.0f s; %d rows not written", timeout,
                            len(self._queue))  # fmt: skip

    def _run(self) -> None:
        try:
            store = self._open()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        next_purge = 0.0
        backoff = 0.5
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                if batch and not self._commit(store, batch):
                    self._requeue(batch)
                    with self._cond:
                        self._cond.wait_for(lambda: self._stopping, timeout=backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                if (now := self._clock()) >= next_purge:
                    next_purge = now + _PURGE_EVERY
                    self._purge(store, now)
        finally:
            store.close()

    def _take(self) -> list[tuple[Row, Ack | None]] | None:
        """The next batch: full, or whatever arrived within the commit interval; None once stopped and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or self._due(), timeout=self._cfg.commit_interval)
            if self._stopping and not self._queue:
                return None
            n = min(len(self._queue), self._cfg.batch_rows)
            batch = [self._queue.popleft() for _ in range(n)]
            self._unacked -= sum(ack is not None for _, ack in batch)
            return batch

    def _requeue(self, batch: list[tuple[Row, Ack | None]]) -> None:
        with self._cond:
            self._queue.extendleft(reversed(batch))
            self._unacked += sum(ack is not None for _, ack in batch)
            while len(self._queue) > self._cfg.max_queue:
                _, ack = self._queue.pop()
                self._unacked -= ack is not None
                self._stats.dropped["queue_full" if ack is None else "deferred"] += 1
            if self._stopping:
                # no database while stopping: what is left is lost (rows with an ack are sent again)
                self._stats.dropped["stopped"] += sum(1 for _, a in self._queue if a is None)
                self._queue.clear()
                self._unacked = 0

    def _commit(self, store: Store, batch: list[tuple[Row, Ack | None]]) -> bool:
        now = self._clock()
        keep = [row for row, _ in batch if in_range(row.values[0], now, self._cfg.keep_days)]
        try:
            inserted = store.write(keep) if keep else 0
        except RecordError as exc:
            log.warning("%s; retrying (%d rows waiting)", exc, len(batch) + len(self._queue))
            with self._cond:
                self._stats.write_errors += 1
            return False
        done = self._clock()
        acks = [ack for _, ack in batch if ack is not None]
        with self._cond:
            self._stats.batches += 1
            self._stats.rows_written += inserted
            self._stats.duplicates += len(keep) - inserted
            self._stats.dropped["out_of_range"] += len(batch) - len(keep)
            self._lags.extend(done - (row.values[0] if row.sent is None else row.sent) for row in keep)
        if acks:
            self._on_acks(acks)
        return True

    def _purge(self, store: Store, now: float) -> None:
        try:
            gone = store.purge(now - self._cfg.keep_days * 86400.0)
        except RecordError as exc:
            log.warning("%s", exc)
            return
        if gone:
            log.info("retention (%d days): dropped %d from %s", self._cfg.keep_days, gone, store.where)
