"""Heartbeat figures read from the OS: CPU %, CPU temperature, RSS. Cheap, Linux-first, never raises."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

__all__ = ["CpuMeter", "cpu_temperature", "peak_rss_mb", "rss_mb"]

THERMAL = Path("/sys/class/thermal")


class CpuMeter:
    """Process CPU use since the previous call, in percent of one core (200% = two cores busy)."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def percent(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        dcpu, dwall = cpu - self._cpu, wall - self._wall
        self._cpu, self._wall = cpu, wall
        return round(100.0 * dcpu / dwall, 1) if dwall > 0 else 0.0


def cpu_temperature(root: Path = THERMAL) -> float | None:
    """Degrees Celsius from the first CPU-like thermal zone, or None where there is none (VMs, containers)."""
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    fallback: float | None = None
    for zone in zones:
        try:
            value = int((zone / "temp").read_text().strip()) / 1000.0
            kind = (zone / "type").read_text().strip().lower()
        except (OSError, ValueError):
            continue
        if "cpu" in kind or "soc" in kind or "x86_pkg" in kind:
            return round(value, 1)
        fallback = fallback if fallback is not None else round(value, 1)
    return fallback


def rss_mb() -> float:
    """Current resident set size."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            pages = int(fh.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
