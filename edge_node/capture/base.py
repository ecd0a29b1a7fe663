"""The one small interface every frame source implements, and a pacing helper."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_FPS", "EndOfStream", "Frame", "FrameSource", "Pacer"]

Frame = npt.NDArray[np.uint8]  # H x W x 3, BGR, uint8
DEFAULT_FPS = 30.0  # for sources without a rate of their own when EDGE_CAMERA__FPS is not set


class EndOfStream(Exception):
    """The source has no more frames (the end of a video file); not a fault."""


@runtime_checkable
class FrameSource(Protocol):
    """A camera-like source. ``read`` blocks until the next frame is due.

    ``read`` returns None for a transient miss (the grabber counts it and tries again), raises CameraError when
    the source is gone (the grabber reopens it after a delay) and EndOfStream at the end of a file.
    """

    name: str

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


class Pacer:
    """Sleeps so that successive ``wait`` calls return at ``fps``; never drifts, never bursts to catch up."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
            self._next += self.period
        else:
            self._next = now + self.period
