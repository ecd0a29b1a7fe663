"""FPS over a sliding window and smoothed stage timings: cheap enough for every frame."""

from __future__ import annotations

from collections import deque

__all__ = ["Ewma", "RateMeter"]


class RateMeter:
    """Events per second over the last ``window`` seconds (timestamps passed in, so it is testable)."""

    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self._stamps: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._stamps.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        edge = now - self.window
        while self._stamps and self._stamps[0] < edge:
            self._stamps.popleft()

    def rate(self, now: float) -> float:
        self._trim(now)
        n = len(self._stamps)
        if n < 2:
            return 0.0
        span = max(now - self._stamps[0], self._stamps[-1] - self._stamps[0])
        return (n - 1) / span if span > 0 else 0.0


class Ewma:
    """Exponentially weighted moving average; ``value`` is 0 until the first sample."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.value = 0.0
        self._seeded = False

    def add(self, sample: float) -> None:
        if self._seeded:
            self.value += self.alpha * (sample - self.value)
        else:
            self.value, self._seeded = sample, True
