"""OpenCV VideoCapture: USB cameras (device index), video files and RTSP/HTTP streams."""

from __future__ import annotations

import logging
from typing import cast

import cv2

from edge_node.capture.base import DEFAULT_FPS, EndOfStream, Frame, Pacer
from edge_node.errors import CameraError

__all__ = ["OpenCVSource"]

log = logging.getLogger(__name__)


class OpenCVSource:
    """``target`` is a device index, a file path or a URL.

    A file plays at its own frame rate unless ``fps`` is given, and ends with EndOfStream (the grabber decides
    whether it loops). A device is asked for ``fps`` only when one is given.
    """

    def __init__(self, target: int | str, width: int, height: int, fps: float | None) -> None:
        self.target = target
        self.name = f"opencv:{target}"
        self.width, self.height, self.fps = width, height, fps
        self._cap: cv2.VideoCapture | None = None
        self._is_file = isinstance(target, str) and "://" not in target
        self._pacer: Pacer | None = None

    def open(self) -> None:
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"OpenCV cannot open camera source {self.target!r}: check the device/path/URL")
        if isinstance(self.target, int):
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a backlog
        if self._is_file:
            native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            rate = self.fps or (native if 0.0 < native <= 1000.0 else DEFAULT_FPS)
            self._pacer = Pacer(rate)
            log.info("%s plays at %.2f fps (%s)", self.name, rate, "as set" if self.fps else "the file's own rate")
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            raise CameraError(f"{self.name} is not open")
        if self._pacer is not None:
            self._pacer.wait()
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return cast(Frame, frame)
        if self._is_file:
            raise EndOfStream(f"end of video file {self.target}")
        raise CameraError(f"{self.name} stopped delivering frames")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
