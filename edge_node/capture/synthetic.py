"""Synthetic frames for benchmarks and tests: precomputed, so the source costs almost nothing."""

from __future__ import annotations

import time

import numpy as np

from edge_node.capture.base import Frame, Pacer

__all__ = ["SyntheticSource"]


class SyntheticSource:
    """Cycles through a few noisy gradient frames at ``fps``.

    ``stall_after`` stops delivering frames after that many (the source then blocks as a frozen camera
    would), which is how tests exercise stall detection and the systemd watchdog. ``on_demand`` drops the
    pacing: the grabber hands over a new frame as soon as the previous one was taken, which makes a camera
    that is never the bottleneck and costs no wasted frames (for benchmarks).
    """

    name = "synthetic"

    def __init__(
        self, width: int, height: int, fps: float, *, stall_after: int | None = None, on_demand: bool = False
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.stall_after = stall_after
        self.on_demand = on_demand
        self._frames: list[Frame] = []
        self._count = 0
        self._pacer = Pacer(fps)

    def open(self) -> None:
        rng = np.random.default_rng(0)
        y = np.linspace(0, 255, self.height, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, self.width, dtype=np.float32)[None, :]
        base = np.stack(
            [
                (x + y) / 2,
                np.broadcast_to(x, (self.height, self.width)),
                np.broadcast_to(y, (self.height, self.width)),
            ],
            axis=-1,
        )
        self._frames = [np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(4)]
        for f in self._frames:
            f.setflags(write=False)

    def read(self) -> Frame | None:
        if self.stall_after is not None and self._count >= self.stall_after:
            time.sleep(0.5)  # a frozen camera: blocks, delivers nothing
            return None
        if not self.on_demand:
            self._pacer.wait()
        frame = self._frames[self._count % len(self._frames)]
        self._count += 1
        return frame

    def close(self) -> None:
        self._frames = []
