"""Measure a loaded variant on this device: every worker runs its own session at once, as the pipeline does.

Used by the node to choose workers x threads (and runtime and precision) when they are ``auto``, and by
``edge-node bench``. It times inference only (not capture, preprocessing or MQTT), on one real frame.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_node.vision.model import Variant

__all__ = ["TEXTURED", "Timing", "time_variant"]


def _textured() -> npt.NDArray[np.uint8]:
    """A camera-like frame (gradients and noise). INT8 kernels run faster on flat input than on real frames, so
    timing on a grey frame would flatter them."""
    rng = np.random.default_rng(0)
    y = np.linspace(0, 255, 480, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, 640, dtype=np.float32)[None, :]
    base = np.stack([(x + y) / 2, np.broadcast_to(x, (480, 640)), np.broadcast_to(y, (480, 640))], axis=-1)
    return np.clip(base + rng.normal(0, 24, base.shape), 0, 255).astype(np.uint8)


TEXTURED = _textured()


@dataclass(frozen=True, slots=True)
class Timing:
    fps: float  # inferences per second, all workers together
    latency_ms: float  # median time of one inference
    cpu_ms: float  # process CPU time per inference (all threads)
    frames: int

    def as_dict(self) -> dict[str, float]:
        return {
            "fps": round(self.fps, 1),
            "latency_ms": round(self.latency_ms, 2),
            "cpu_ms": round(self.cpu_ms, 2),
            "frames": self.frames,
        }


def time_variant(variant: Variant, frame: npt.NDArray[np.uint8], *, seconds: float = 1.0, warmup: int = 3) -> Timing:
    """Run all of ``variant``'s sessions concurrently on ``frame`` for about ``seconds``."""
    tensor = variant.preprocessor(frame).copy()
    for session in variant.sessions:
        for _ in range(warmup):
            session.run(tensor)
    latencies: list[list[float]] = [[] for _ in variant.sessions]
    start = threading.Barrier(len(variant.sessions) + 1)
    deadline = [0.0]

    def work(i: int) -> None:
        session, mine = variant.sessions[i], latencies[i]
        start.wait()
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            session.run(tensor)
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=work, args=(i,), name=f"timing-{i}") for i in range(len(variant.sessions))]
    for t in threads:
        t.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline[0] = wall0 + seconds
    start.wait()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    all_runs = [x for runs in latencies for x in runs]
    n = len(all_runs)
    return Timing(
        fps=n / wall if wall > 0 else 0.0,
        latency_ms=1000.0 * statistics.median(all_runs) if all_runs else float("inf"),
        cpu_ms=1000.0 * cpu / n if n else float("inf"),
        frames=n,
    )
