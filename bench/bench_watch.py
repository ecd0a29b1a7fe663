"""The watch rules' cost per frame on the node's loop (issue 21's bar: < 0.1 ms per frame at 10 rules).

Feeds ``Tracker.frame`` top-5 results shaped like the demo camera's (cat photo frames, then other photos),
with 10 rules over the ImageNet groups and single labels, some starting and ending detections as they go.
Prints the mean time per frame, the same for 1 rule, and the ratio of the 10-rule cost to the bar.

    PYTHONPATH=. .venv/bin/python -m bench.bench_watch --frames 200000
"""

from __future__ import annotations

import argparse
import os
import time

from edge_node.modelzoo.labels import imagenet_labels
from edge_node.vision.model import Score
from edge_node.watch import Tracker
from edge_node.wire import WatchRule

BAR_MS = 0.1


def rules(n: int) -> list[WatchRule]:
    pool = [
        WatchRule(name="cat", classes=["cat"], min_confidence=0.3, min_frames=3),
        WatchRule(name="dog", classes=["dog"], min_confidence=0.4, min_frames=3),
        WatchRule(name="bird", classes=["bird"], min_confidence=0.5, min_seconds=1.0),
        WatchRule(name="car", classes=["car"], min_confidence=0.5, min_frames=5, cooldown_s=10),
        WatchRule(name="vehicle", classes=["vehicle"], min_confidence=0.3, min_frames=2),
        WatchRule(name="coffee", classes=["espresso", "cup", "coffee mug"], min_confidence=0.2, min_frames=2),
        WatchRule(name="rocket", classes=["missile", "projectile", "space shuttle"], min_confidence=0.2),
        WatchRule(name="suit", classes=["suit", "military uniform"], min_confidence=0.3, min_frames=4),
        WatchRule(name="tabby", classes=["tabby"], min_confidence=0.2, gap_s=0.5),
        WatchRule(name="bike", classes=["motorbike", "bicycle"], min_confidence=0.3, min_frames=3),
    ]
    return pool[:n]


def frames(count: int, fps: float = 30.0) -> list[tuple[float, tuple[Score, ...]]]:
    """The demo camera's cycle: 2 s per photo, top-5 of each (cat, coffee, rocket, astronaut)."""
    photos = [
        (Score(281, "tabby", 0.41), Score(285, "Egyptian cat", 0.22), Score(282, "tiger cat", 0.2),
         Score(287, "lynx", 0.03), Score(478, "carton", 0.01)),
        (Score(967, "espresso", 0.62), Score(968, "cup", 0.2), Score(504, "coffee mug", 0.1),
         Score(925, "consomme", 0.02), Score(960, "chocolate sauce", 0.01)),
        (Score(657, "missile", 0.5), Score(744, "projectile", 0.3), Score(812, "space shuttle", 0.1),
         Score(403, "aircraft carrier", 0.01), Score(833, "submarine", 0.01)),
        (Score(834, "suit", 0.3), Score(652, "military uniform", 0.2), Score(400, "academic gown", 0.1),
         Score(617, "lab coat", 0.05), Score(869, "trench coat", 0.03)),
    ]  # fmt: skip
    per_photo = round(2.0 * fps)
    return [(i / fps, photos[(i // per_photo) % len(photos)]) for i in range(count)]


def per_frame_ms(n_rules: int, feed: list[tuple[float, tuple[Score, ...]]]) -> tuple[float, int]:
    tracker = Tracker("bench", rules(n_rules), labels=imagenet_labels())
    said = 0
    start = time.perf_counter()
    for ts, top in feed:
        said += len(tracker.frame(ts, top))
    return (time.perf_counter() - start) * 1000 / len(feed), said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000)
    args = parser.parse_args()
    feed = frames(args.frames)
    one, _ = per_frame_ms(1, feed)
    ten, said = per_frame_ms(10, feed)
    print(f"frames                 {len(feed)}")
    print(f"load                   {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"1 rule   ms/frame      {one:.5f}")
    print(f"10 rules ms/frame      {ten:.5f}  ({said} starts and ends)")
    print(f"10 rules / bar         {ten / BAR_MS:.3f}  (bar {BAR_MS} ms)")


if __name__ == "__main__":
    main()
