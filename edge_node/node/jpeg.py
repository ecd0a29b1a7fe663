"""The latest frame as a small JPEG with its label drawn on it: the payload of the ``snapshot`` topic. Pure.

The budget (``EDGE_SNAPSHOT__MAX_BYTES``, 50 KB by default) keeps one snapshot cheap on a Pi's uplink and on
the broker: the frame is scaled to ``max_width`` first, then JPEG quality steps down, and if even the lowest
quality is too big the image shrinks again, with the caption redrawn at each size so it stays legible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_node.capture.base import Frame
from edge_node.config import SnapshotConfig
from edge_node.errors import SnapshotError

__all__ = ["DISABLED", "QUALITIES", "Jpeg", "caption_for", "encode_snapshot", "take_snapshot"]

DISABLED = "snapshots are off on this node (privacy); set EDGE_SNAPSHOT__ENABLED=true on it to allow them"

QUALITIES = (85, 75, 65, 55, 45, 35, 25)
_SHRINK = 0.75
_MIN_WIDTH = 48
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, slots=True)
class Jpeg:
    data: bytes
    width: int
    height: int
    quality: int

    def detail(self) -> dict[str, object]:
        """What the node reports in the snapshot command's event."""
        return {"bytes": len(self.data), "width": self.width, "height": self.height, "quality": self.quality}


def caption_for(label: str | None, confidence: float | None) -> str:
    """``"tabby 87%"``; Hershey fonts draw ASCII only, so anything else becomes ``?``."""
    if label is None:
        return "no prediction yet"
    text = label if confidence is None else f"{label} {confidence:.0%}"
    return text.encode("ascii", "replace").decode()


def _scaled(frame: Frame, width: int) -> Frame:
    h, w = frame.shape[:2]
    if w <= width:
        return frame.copy()
    height = max(1, round(h * width / w))
    return np.ascontiguousarray(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))


def _draw_caption(image: Frame, caption: str) -> None:
    """White text on a dark band across the top, sized to the image width."""
    h, w = image.shape[:2]
    scale = max(0.35, w / 640)
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(caption, _FONT, scale, thickness)
    if tw > w - 8:  # a long label: fit it to the width
        scale *= (w - 8) / tw
        (tw, th), base = cv2.getTextSize(caption, _FONT, scale, thickness)
    band = min(h, th + base + 8)
    image[:band] = (image[:band] * 0.35).astype(np.uint8)
    cv2.putText(image, caption, (4, 4 + th), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def encode_snapshot(frame: Frame, caption: str, *, max_bytes: int = 50_000, max_width: int = 640) -> Jpeg:
    """A JPEG of ``frame`` (BGR, HxWx3 uint8) with ``caption`` drawn on it, at most ``max_bytes`` long."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise SnapshotError(f"expected an HxWx3 uint8 BGR frame, got shape {frame.shape} {frame.dtype}")
    width = min(max_width, frame.shape[1])
    while width >= _MIN_WIDTH:
        image = _scaled(frame, width)
        _draw_caption(image, caption)
        for quality in QUALITIES:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise SnapshotError("OpenCV could not encode the frame as JPEG")
            if buf.size <= max_bytes:
                return Jpeg(buf.tobytes(), image.shape[1], image.shape[0], quality)
        width = int(width * _SHRINK)
    raise SnapshotError(f"the frame does not fit in {max_bytes} bytes even at {_MIN_WIDTH} px; raise the limit")


def take_snapshot(
    cfg: SnapshotConfig, frame: Frame | None, label: str | None, confidence: float | None, camera: str
) -> Jpeg:
    """The node's answer to ``snapshot``; SnapshotError says why there is none (disabled, no frame yet)."""
    if not cfg.enabled:
        raise SnapshotError(DISABLED)
    if frame is None:
        raise SnapshotError(f"no camera frame to send yet (camera: {camera})")
    return encode_snapshot(frame, caption_for(label, confidence), max_bytes=cfg.max_bytes, max_width=cfg.max_width)
