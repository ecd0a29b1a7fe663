"""Raspberry Pi camera through picamera2, imported lazily: it only exists on a Pi (``pi`` extra or apt)."""

from __future__ import annotations

import importlib
from typing import Any

from edge_node.capture.base import Frame
from edge_node.errors import CameraError, MissingExtraError

__all__ = ["Picamera2Source"]


class Picamera2Source:
    """A thin adapter: configure a BGR video stream of the requested size and read arrays from it.

    picamera2's ``RGB888`` format is laid out B, G, R in memory, which is exactly OpenCV's BGR.
    """

    name = "picamera2"

    def __init__(self, width: int, height: int, fps: float, *, module: Any = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._module = module  # tests pass a stand-in; production imports picamera2
        self._cam: Any = None

    def open(self) -> None:
        module = self._module
        if module is None:
            try:
                module = importlib.import_module("picamera2")
            except ImportError as exc:
                raise MissingExtraError("the Raspberry Pi camera (apt install python3-picamera2)", "pi") from exc
        try:
            cam = module.Picamera2()
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                controls={"FrameRate": float(self.fps)},
                buffer_count=2,
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError/IndexError when no camera is attached
            raise CameraError(f"cannot start the Raspberry Pi camera: {exc}") from exc
        self._cam = cam

    def read(self) -> Frame | None:
        if self._cam is None:
            raise CameraError("picamera2 is not open")
        try:
            frame = self._cam.capture_array("main")
        except Exception as exc:
            raise CameraError(f"picamera2 capture failed: {exc}") from exc
        return frame[:, :, :3] if frame.ndim == 3 and frame.shape[2] == 4 else frame  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
