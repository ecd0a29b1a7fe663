"""The server list and the failover policy, without I/O: which server to try next, and how long to wait first.

``EDGE_MQTT__HOSTS=a:8883,b:8883,c:8883`` names the servers of a cluster; ``EDGE_MQTT__HOST`` is the one-item
case. A client starts at a random server, so that a fleet restarting together spreads over the cluster instead of
stampeding the first name, and moves on to the next server whenever a connection fails or drops. Within one
round each server is tried at once; only after a whole round failed does the client wait, with exponential
backoff and jitter, so a dead server costs a node no more than one connect timeout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "Server", "ServerOrder", "parse_server", "parse_servers"]


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_server(text: str, default_port: int) -> Server:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; ValueError says what is wrong."""
    item = text.strip()
    if not item:
        raise ValueError("an empty server name")
    host, port_text = item, ""
    if item.startswith("["):
        end = item.find("]")
        if end < 0 or (end + 1 < len(item) and item[end + 1] != ":"):
            raise ValueError(f"{item!r}: an IPv6 address goes in brackets, e.g. [::1]:8883")
        host, port_text = item[1:end], item[end + 2 :]
    elif item.count(":") == 1:
        host, port_text = item.split(":")
    elif ":" in item:
        raise ValueError(f"{item!r}: put an IPv6 address in brackets, e.g. [{item}]:8883")
    if not host or any(ch.isspace() or ch in "/,@" for ch in host):
        raise ValueError(f"{item!r}: not a host name or address")
    if not port_text:
        return Server(host, default_port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{item!r}: the port must be a number from 1 to 65535")
    return Server(host, int(port_text))


def parse_servers(text: str | list[str], default_port: int) -> tuple[Server, ...]:
    """A comma-separated list (or a list of items); duplicates are refused, since they skew the rotation."""
    items = [part for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    servers = tuple(parse_server(item, default_port) for item in items)
    seen: set[Server] = set()
    for server in servers:
        if server in seen:
            raise ValueError(f"{server} is listed twice")
        seen.add(server)
    return servers


@dataclass
class ServerOrder:
    """Round robin over the servers from a random start; counts failovers (a connect to another server than
    the last one that worked)."""

    servers: tuple[Server, ...]
    rng: random.Random = field(default_factory=random.Random)
    failovers: int = 0
    _index: int = -1
    _last_good: Server | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("no MQTT server to connect to")
        self._index = self.rng.randrange(len(self.servers))

    @property
    def current(self) -> Server:
        return self.servers[self._index]

    @property
    def connected_to(self) -> Server | None:
        """The server of the latest connection that worked."""
        return self._last_good

    def advance(self) -> Server:
        """Move on to the next server (after a failed connect or a dropped connection)."""
        self._index = (self._index + 1) % len(self.servers)
        return self.current

    def connected(self) -> bool:
        """Record a connection to the current server; True when that is a failover."""
        server = self.current
        moved = self._last_good is not None and server != self._last_good
        self.failovers += moved
        self._last_good = server
        return moved


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between connect attempts: none within a round of servers, then exponential with full jitter."""

    initial: float
    maximum: float

    def delay(self, failures: int, servers: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` connect attempts in a row have failed, over ``servers`` servers."""
        if failures <= 0:
            return 0.0
        if failures % servers:
            return 0.0  # the next server of this round may answer: try it at once
        rounds = failures // servers
        cap = min(self.maximum, self.initial * 2 ** (rounds - 1))
        return rng.uniform(cap / 2, cap)

    def after_drop(self, rng: random.Random) -> float:
        """Seconds to wait after a working connection dropped: a spread, so the servers that remain are not hit
        by every client of the lost one in the same instant."""
        return rng.uniform(0, self.initial)
