"""A tiny ``sd_notify`` client, so the node can be a ``Type=notify`` unit with a watchdog.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and, with ``WatchdogSec=``,
``$WATCHDOG_USEC``/``$WATCHDOG_PID``. Outside systemd every call is a no-op, so callers never branch.
:class:`WatchdogGate` keeps the pings honest: they only go out while the pipeline makes progress.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

__all__ = ["Notifier", "WatchdogGate", "run_watchdog"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends state strings to systemd's notify socket; silently does nothing without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET`` and the watchdog variables (the latter only if meant for this process)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw_usec, raw_pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if raw_usec and raw_usec.isdigit() and int(raw_usec) > 0:
            pid_ok = raw_pid is None or (raw_pid.isdigit() and int(raw_pid) == os.getpid())
            usec = int(raw_usec) if pid_ok else None
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (ping at about half of it), or None when there is no watchdog."""
        return self._watchdog_usec / 1e6 if self._watchdog_usec else None

    def ready(self) -> None:
        self.notify("READY=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify("STATUS=" + text.replace("\n", " "))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def notify(self, state: str) -> bool:
        """Send one datagram; failures are logged, never raised (systemd may be restarting)."""
        if self._address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(state.encode(), self._address)
            except OSError as exc:
                log.warning("sd_notify %r to %s failed: %s", state, self._address, exc)
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class WatchdogGate:
    """Pings are allowed only if a frame was processed within ``timeout_s``: a stalled pipeline stops them.

    ``progress()`` is called from the pipeline's worker thread after each frame; ``should_ping(now)`` from
    the periodic watchdog task. Both take ``time.monotonic()`` seconds. A plain float store is atomic under
    the GIL, so no lock is needed.
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        self._last: float | None = None

    def progress(self, now: float | None = None) -> None:
        self._last = time.monotonic() if now is None else now

    @property
    def last_progress(self) -> float | None:
        return self._last

    def should_ping(self, now: float | None = None) -> bool:
        last = self._last
        if last is None:
            return False
        current = time.monotonic() if now is None else now
        return current - last <= self.timeout_s


async def run_watchdog(notifier: Notifier, gate: WatchdogGate, *, period: float | None = None) -> None:
    """Ping the watchdog every ``period`` seconds (default: half of ``WatchdogSec``) while the gate allows.

    Returns at once when systemd set no watchdog; otherwise runs until cancelled. A missed ping is the
    point: systemd then kills and restarts the stalled node.
    """
    interval = notifier.watchdog_interval()
    if period is None:
        if interval is None or not notifier.enabled:
            return
        period = interval / 2
    stalled = False
    while True:
        if gate.should_ping():
            notifier.watchdog()
            if stalled:
                log.info("pipeline made progress again: watchdog pings resumed")
            stalled = False
        elif not stalled and gate.last_progress is not None:
            log.warning("no frame processed for %.1f s: withholding watchdog pings", gate.timeout_s)
            stalled = True
        await asyncio.sleep(period)
