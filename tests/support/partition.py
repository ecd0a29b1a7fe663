"""A network partition for tests: a private network namespace joined to the host by a veth pair.

Cutting the link (the host end set down) stops every packet both ways without a RST or a FIN, as a pulled
cable, a dead Wi-Fi or a power cut on the far side would: neither TCP end learns anything, so only MQTT's
keepalive can tell. (A kill -9 of the process is different: its kernel closes the socket at once, so the broker
sees the connection end immediately.) Needs root, or CAP_NET_ADMIN with ``ip netns`` allowed.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count

__all__ = ["NetnsUnavailable", "Partition", "partition"]

POOL = ipaddress.IPv4Network("10.254.0.0/16")  # private /30s are carved from here, one per partition
_serial = count()


class NetnsUnavailable(RuntimeError):
    """``ip netns`` cannot be used here (no iproute2, not root, or a sandbox without network namespaces)."""


@dataclass(frozen=True)
class Partition:
    """``node_ip`` lives in namespace ``name``; ``host_ip`` on the host, where a broker can listen on it."""

    name: str
    host_if: str
    node_if: str
    host_ip: str
    node_ip: str

    @property
    def run_inside(self) -> list[str]:
        """A command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Stop all traffic, silently: the host end of the veth goes down (the far end loses its carrier)."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise NetnsUnavailable("the ip command is missing: apt-get install iproute2") from None
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of POOL that no interface of this host uses yet (tests of other processes may hold some)."""
    used = _ip("-o", "-4", "addr", "show").stdout
    subnets = list(POOL.subnets(new_prefix=30))
    start = (os.getpid() * 97 + next(_serial) * 7) % len(subnets)
    for i in range(len(subnets)):
        net = subnets[(start + i) % len(subnets)]
        if f" {next(net.hosts())}/" not in used:
            return net
    raise NetnsUnavailable(f"every /30 of {POOL} is in use")


@contextmanager
def partition() -> Iterator[Partition]:
    """A namespace and veth pair with names unique to this process and call; removed again on exit."""
    tag = f"{os.getpid()}x{next(_serial)}"  # "gp<tag>h" stays within the 15 characters of an interface name
    net = _free_subnet()
    host_ip, node_ip = (str(a) for a in net.hosts())
    part = Partition(f"ghostpi-t{tag}", f"gp{tag}h", f"gp{tag}n", host_ip, node_ip)
    _ip("netns", "add", part.name)
    try:
        _ip("link", "add", part.host_if, "type", "veth", "peer", "name", part.node_if)
        _ip("link", "set", part.node_if, "netns", part.name)
        _ip("addr", "add", f"{host_ip}/30", "dev", part.host_if)
        _ip("link", "set", part.host_if, "up")
        inside = ["-n", part.name]
        _ip(*inside, "addr", "add", f"{node_ip}/30", "dev", part.node_if)
        _ip(*inside, "link", "set", part.node_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield part
    finally:
        _ip("link", "del", part.host_if, check=False)  # takes its peer in the namespace with it
        _ip("netns", "del", part.name, check=False)
