"""The capture thread and its one-frame slot: the newest frame always wins, stale ones are counted.

The grabber records what happens (frames, failures with their reason, the end of a file, restarts) and
answers :meth:`Grabber.snapshot`; the node's supervisor turns changes between snapshots into events. A
source that hangs inside ``read`` cannot be interrupted, so :meth:`Grabber.restart` leaves that thread behind
and starts a new one on a fresh source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge_node.capture.base import EndOfStream, Frame, FrameSource
from edge_node.errors import EdgeError
from edge_node.slot import LatestSlot

__all__ = ["CameraSnapshot", "CameraState", "Grabber", "LatestSlot"]

log = logging.getLogger(__name__)

# The capture layer's own words; the heartbeat's ``camera`` field carries them (tests/test_capture.py keeps the
# two lists equal), but capture does not depend on the wire contract.
CameraState = Literal["starting", "ok", "stalled", "error", "ended", "stopped"]


@dataclass(frozen=True, slots=True)
class CameraSnapshot:
    state: CameraState
    captured: int
    dropped: int
    failures: int  # times the source failed to open or stopped delivering
    last_error: str | None
    ends: int  # ends of a video file reached
    restarts: int
    frame_age: float | None  # seconds since the last frame


class _Run:
    """One capture thread's life; a restart ends it (a thread stuck in ``read`` notices whenever it returns)."""

    def __init__(self) -> None:
        self.stop = threading.Event()


class Grabber:
    """Reads the source in its own thread and reopens it after errors."""

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        *,
        stall_timeout: float,
        reopen_delay: float,
        at_end: Literal["loop", "stop", "exit"] = "loop",
    ) -> None:
        self._factory = factory
        self.stall_timeout = stall_timeout
        self.reopen_delay = reopen_delay
        self.at_end = at_end
        self.slot: LatestSlot[Frame] = LatestSlot()
        self.captured = 0
        self.last_frame_at: float | None = None
        self._failures = 0
        self._error: str | None = None
        self._ends = 0
        self._ended = False
        self._restarts = 0
        self._stopped = False
        self._run = _Run()
        self._thread = self._new_thread(self._run)
        self.source_name = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stopped = True
        self._run.stop.set()
        self._thread.join(timeout)

    def restart(self, timeout: float = 1.0) -> None:
        """Abandon the capture thread (it may be stuck in a driver call) and start a new one."""
        old = self._run
        old.stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the capture thread is stuck in %s; leaving it behind", self.source_name or "the source")
        self._restarts += 1
        self._ended = False
        self._run = _Run()
        self._thread = self._new_thread(self._run)
        self._thread.start()

    def state(self, now: float | None = None) -> CameraState:
        now = time.monotonic() if now is None else now
        if self._stopped:
            return "stopped"
        if self._ended:
            return "ended"
        if self.last_frame_at is None:
            return "error" if self._error else "starting"
        if now - self.last_frame_at > self.stall_timeout:
            return "error" if self._error else "stalled"
        return "ok"

    def frame_age(self, now: float | None = None) -> float | None:
        if self.last_frame_at is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_frame_at

    def snapshot(self, now: float | None = None) -> CameraSnapshot:
        now = time.monotonic() if now is None else now
        return CameraSnapshot(
            state=self.state(now),
            captured=self.captured,
            dropped=self.slot.dropped,
            failures=self._failures,
            last_error=self._error,
            ends=self._ends,
            restarts=self._restarts,
            frame_age=self.frame_age(now),
        )

    def _new_thread(self, run: _Run) -> threading.Thread:
        return threading.Thread(target=self._capture, args=(run,), name="capture", daemon=True)

    def _capture(self, run: _Run) -> None:
        while not run.stop.is_set():
            source: FrameSource | None = None
            delay = self.reopen_delay
            try:
                source = self._factory()
                self.source_name = source.name
                source.open()
                on_demand = bool(getattr(source, "on_demand", False))
                log.info("camera source %s opened", source.name)
                self._read(run, source, on_demand)
            except EndOfStream as end:
                self._ends += 1
                if self.at_end == "loop":
                    log.info("%s; playing it again", end)
                    delay = 0.0
                else:
                    log.info("%s; capture stops (EDGE_CAMERA__AT_END=%s)", end, self.at_end)
                    self._ended = True
                    run.stop.set()
            except EdgeError as exc:
                self._fail(str(exc))
                log.error("camera: %s; retrying in %.1fs", exc, delay)
            except Exception as exc:  # a driver bug must not kill capture for good
                self._fail(f"{type(exc).__name__}: {exc}")
                log.exception("camera source crashed; retrying in %.1fs", delay)
            finally:
                if source is not None:
                    try:
                        source.close()
                    except Exception:
                        log.debug("closing the camera source failed", exc_info=True)
            run.stop.wait(delay)

    def _read(self, run: _Run, source: FrameSource, on_demand: bool) -> None:
        while not run.stop.is_set():
            frame = source.read()
            if frame is None or run.stop.is_set():
                continue
            self.captured += 1
            self.last_frame_at = time.monotonic()
            self._error = None
            self.slot.put(frame)
            if on_demand:
                while not self.slot.wait_taken(0.25) and not run.stop.is_set():
                    pass

    def _fail(self, error: str) -> None:
        self._failures += 1
        self._error = error
