"""Hand items from worker threads to the event loop with one wake-up per batch, not one per item."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LoopHandoff"]

T = TypeVar("T")

log = logging.getLogger(__name__)


LINGER = 0.02  # seconds: a stream faster than one item per LINGER is drained on a timer of this period


class LoopHandoff(Generic[T]):
    """``put`` from any thread; ``deliver`` runs on the loop for each item, in order.

    Each wake-up costs syscalls and a GIL hand-over, so the loop is woken only when it is not already due to
    drain. When items come faster than one per ``linger`` seconds (a drain within ``linger`` of the previous
    one), the loop stops being woken and drains on a timer every ``linger`` instead, while items keep coming: a
    fast stream costs one timed drain per ``linger`` and arrives in batches, which the MQTT link sends at once.
    A slower stream, or an item after a quiet spell, wakes the loop at once. So an item waits at most ``linger``
    for the loop, and only in a stream faster than 1/``linger`` per second. The queue is bounded: a loop that
    stalls drops the oldest items (counted) instead of hoarding them.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[T], None],
        *,
        maxlen: int = 256,
        linger: float = LINGER,
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._linger = linger
        self._lock = threading.Lock()
        self._scheduled = False  # a drain is due (woken or timed): put() need not wake the loop
        self._drained_at = float("-inf")  # loop time of the last drain that found items
        self.dropped = 0
        self.wakeups = 0  # drains a put() asked for (the rest ran on the timer)

    def put(self, item: T) -> None:
        with self._lock:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
            self.wakeups += 1
        with contextlib.suppress(RuntimeError):  # the loop has closed: the node is shutting down
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self, on_timer: bool = False) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            now = self._loop.time()
            # A fast stream (items on a timed drain, or a drain within linger of the previous one) is drained on
            # the timer; after a quiet spell or in a slow stream, put() wakes the loop.
            timed = bool(items) and (on_timer or now - self._drained_at < self._linger)
            self._scheduled = timed
        if not items:
            return
        if timed:
            self._loop.call_later(self._linger, self._drain, True)
        self._drained_at = now
        for item in items:
            try:
                self._deliver(item)
            except Exception:  # one bad item must not lose the rest of the batch
                log.exception("handling %r failed", item)
