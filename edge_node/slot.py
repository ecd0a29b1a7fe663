"""The newest-wins mailbox that connects the node's threads (capture → inference workers)."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["LatestSlot"]

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-item mailbox between threads. ``put`` replaces an unread item (counting it as dropped), so a
    consumer always gets the newest one and nothing queues up. The item stays after it was taken, for
    :meth:`peek`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._fresh = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._fresh:
                self.dropped += 1
            self._item, self._fresh = item, True
            self._cond.notify()

    def get(self, timeout: float) -> T | None:
        """The next unread item, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._fresh and not self._cond.wait_for(lambda: self._fresh, timeout):
                return None
            item, self._fresh = self._item, False
            self._cond.notify_all()
            return item

    def wait_taken(self, timeout: float) -> bool:
        """Block until the current item was taken (back-pressure for a producer); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._fresh, timeout)

    def peek(self) -> T | None:
        """The newest item, read or not."""
        with self._cond:
            return self._item
