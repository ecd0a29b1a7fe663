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


class LoopHandoff(Generic[T]):
    """``put`` from any thread; ``deliver`` runs on the loop for each item, in order.

    Each wake-up costs a syscall and a GIL hand-over, so the loop is woken only when it is not already due to
    drain. The queue is bounded: a loop that stalls drops the oldest items (counted) instead of hoarding them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[T], None], *, maxlen: int = 256) -> None:
        self._loop = loop
        self._deliver = deliver
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._lock = threading.Lock()
        self._scheduled = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._lock:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: the node is shutting down
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._scheduled = False
        for item in items:
            try:
                self._deliver(item)
            except Exception:  # one bad item must not lose the rest of the batch
                log.exception("handling %r failed", item)
