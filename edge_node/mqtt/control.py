"""Control router: raw bytes from a command topic → a validated Command, or an error Event. Pure logic.

It applies the payload size cap and a token-bucket rate limit before parsing anything, so a flood of
garbage costs the node almost nothing and never stops it. Each command topic has its own router: the control
topics parse JSON commands, Home Assistant's mode topic only a mode name (``parse_mode_select``), and a flood
on one does not use up the other's rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edge_node.errors import CommandError
from edge_node.wire import Command, Event, command_id, parse_command

__all__ = ["ControlRouter", "Parser", "TokenBucket"]

Parser = Callable[[bytes, int], Command]  # (payload, max_bytes) → Command, or CommandError


@dataclass
class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``; time is passed in."""

    rate: float
    burst: float
    _tokens: float = field(init=False)
    _at: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    def take(self, now: float) -> bool:
        if self._at != float("-inf"):
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ControlRouter:
    def __init__(self, *, max_bytes: int, rate: float, parse: Parser = parse_command) -> None:
        self.max_bytes = max_bytes
        self.parse = parse
        self.bucket = TokenBucket(rate=rate, burst=max(1.0, 2 * rate))
        self.rejected = 0
        self.limited = 0

    def route(self, payload: bytes, now: float) -> Command | Event | None:
        """A Command to execute, an error Event to publish, or None when rate-limited (dropped silently,
        since answering a flood would amplify it)."""
        if not self.bucket.take(now):
            self.limited += 1
            return None
        try:
            return self.parse(payload, self.max_bytes)
        except CommandError as exc:
            self.rejected += 1
            ident, cmd = command_id(payload) if len(payload) <= self.max_bytes else (None, "invalid")
            return Event(id=ident, cmd=cmd, ok=False, error=str(exc))
