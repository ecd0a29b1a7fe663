"""The capture thread and its one-frame slot: the newest frame always wins, stale ones are counted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_node.capture.base import Frame, FrameSource
from edge_node.errors import EdgeError
from edge_node.messages import Camera
from edge_node.slot import LatestSlot

__all__ = ["Grabber", "LatestSlot"]

log = logging.getLogger(__name__)


class Grabber:
    """Reads the source in its own thread; reopens it after errors; tracks the camera's health."""

    def __init__(self, factory: Callable[[], FrameSource], *, stall_timeout: float, reopen_delay: float) -> None:
        self._factory = factory
        self.stall_timeout = stall_timeout
        self.reopen_delay = reopen_delay
        self.slot: LatestSlot[Frame] = LatestSlot()
        self.captured = 0
        self.last_frame_at: float | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.source_name = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def state(self, now: float | None = None) -> Camera:
        now = time.monotonic() if now is None else now
        if self._stop.is_set():
            return "stopped"
        if self.last_frame_at is None:
            return "error" if self._error else "starting"
        if now - self.last_frame_at > self.stall_timeout:
            return "error" if self._error else "stalled"
        return "ok"

    def frame_age(self, now: float | None = None) -> float | None:
        if self.last_frame_at is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_frame_at

    def _run(self) -> None:
        while not self._stop.is_set():
            source: FrameSource | None = None
            try:
                source = self._factory()
                self.source_name = source.name
                source.open()
                on_demand = bool(getattr(source, "on_demand", False))
                self._error = None
                log.info("camera source %s opened", source.name)
                while not self._stop.is_set():
                    frame = source.read()
                    if frame is None:
                        continue
                    self.captured += 1
                    self.last_frame_at = time.monotonic()
                    self.slot.put(frame)
                    if on_demand:
                        while not self.slot.wait_taken(0.25) and not self._stop.is_set():
                            pass
            except EdgeError as exc:
                self._error = str(exc)
                log.error("camera: %s; retrying in %.1fs", exc, self.reopen_delay)
            except Exception as exc:  # a driver bug must not kill capture for good
                self._error = f"{type(exc).__name__}: {exc}"
                log.exception("camera source crashed; retrying in %.1fs", self.reopen_delay)
            finally:
                if source is not None:
                    try:
                        source.close()
                    except Exception:
                        log.debug("closing the camera source failed", exc_info=True)
            self._stop.wait(self.reopen_delay)
