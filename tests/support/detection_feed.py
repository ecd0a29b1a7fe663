"""Detections as a node publishes them (the wire model ``edge_node.wire.watch.Detection``), for the dashboard's
timeline tests: a start and an end with the same id, and a small real JPEG for a snapshot."""

from __future__ import annotations

import cv2
import numpy as np

from edge_node.wire.watch import Detection

__all__ = ["end", "jpeg", "start"]


def start(node: str, rule: str, started: float, *, label: str = "tabby", snapshot: bool | None = None) -> Detection:
    return Detection(
        node=node,
        rule=rule,
        event="start",
        id=f"{rule}-{round(started * 1000)}",
        ts=started + 0.4,
        started=started,
        label=label,
        frames=3,
        peak_confidence=0.8,
        best_ts=started,
        snapshot=snapshot,
    )


def end(first: Detection, duration: float = 2.0, *, reason: str = "gap") -> Detection:
    return first.model_copy(
        update={
            "event": "end",
            "ts": first.started + duration + 1.0,
            "frames": 10,
            "ended": first.started + duration,
            "duration_s": duration,
            "mean_confidence": 0.7,
            "reason": reason,
            "snapshot": None,
        }
    )


def jpeg(shade: int = 128) -> bytes:
    """A real 32x24 JPEG, encoded by OpenCV as the node encodes its snapshots."""
    image = np.full((24, 32, 3), (shade, 64, 255 - shade), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(data)
