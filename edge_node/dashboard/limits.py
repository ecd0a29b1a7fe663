"""Per-address rate limits for the dashboard (stream connects, wrong tokens). Pure: time is passed in.

A sliding window: at most ``limit`` events per client in any ``window`` seconds. Clients are keyed by
address, IPv6 by its /64 (one host usually holds a whole /64, so keying by single addresses would be no
limit at all). The table itself is bounded: past ``clients`` entries the least recently seen is forgotten, so
a flood from many addresses costs a fixed amount of memory (and only buys those addresses a fresh window,
which they would have anyway).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

__all__ = ["RateLimit", "client_key"]


def client_key(address: str | None) -> str:
    """The address a limit applies to: IPv4 as it is, IPv6 by its /64."""
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RateLimit:
    """At most ``limit`` events per client key in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = 60.0, clients: int = 4096) -> None:
        self.limit = limit
        self.window = window
        self.clients = clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def _times(self, key: str, now: float) -> deque[float]:
        times = self._seen.get(key)
        if times is None:
            times = self._seen[key] = deque(maxlen=self.limit)
            while len(self._seen) > self.clients:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def wait(self, key: str, now: float) -> float:
        """Seconds until one more event is allowed for ``key`` (0: allowed now). Records nothing."""
        times = self._times(key, now)
        return 0.0 if len(times) < self.limit else times[0] + self.window - now

    def record(self, key: str, now: float) -> None:
        self._times(key, now).append(now)

    def allow(self, key: str, now: float) -> bool:
        """Record one event if the limit allows it; False (and nothing recorded) when it does not."""
        if self.wait(key, now) > 0:
            return False
        self.record(key, now)
        return True
