"""A detection's snapshot is the highest-confidence frame within its first second (real JPEGs through OpenCV)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np

from edge_node.config import SnapshotConfig
from edge_node.node.outbox import Outbox
from edge_node.node.watching import Watcher
from edge_node.vision.model import Classification, ModelInfo, Score
from edge_node.vision.pipeline import Result
from edge_node.watch import Journal
from edge_node.wire import Detection, Mode, Topics, WatchRule
from tests.support.fakelink import FakeLink

T = Topics("gp", "n1")
INFO = ModelInfo("m", "1", "int8", "onnxruntime")
RULE = WatchRule(name="cat", classes=["cat"], min_confidence=0.3, min_frames=3)
LABELS = ["tabby", "espresso"]
FPS = 10


def _result(i: int, confidence: float) -> Result:
    # each frame its own grey, to tell them apart in the JPEG
    frame = np.full((120, 160, 3), 20 + 10 * (i % 20), np.uint8)
    frame.setflags(write=False)
    top = (Score(0, "tabby", confidence), Score(1, "espresso", 0.01)) if confidence else (Score(1, "espresso", 0.9),)
    c = Classification(top, 224, 1.0, 5.0)
    return Result(i, 1000.0 + i / FPS, c, FPS, 6.0, Mode.HIGH, INFO, 0, frame)


def _run(tmp_path: Path, confidences: list[float], *, enabled: bool) -> tuple[FakeLink, Watcher]:
    link = FakeLink()
    watcher = Watcher(
        "n1", [RULE], Outbox(link, T), Journal(tmp_path / "open.json"), labels=LABELS,
        snapshots=SnapshotConfig(enabled=enabled, max_bytes=8000),
    )  # fmt: skip

    async def feed() -> None:
        for i, conf in enumerate(confidences):
            watcher.on_result(_result(i, conf))
            await asyncio.sleep(0)
        await watcher.flush()

    asyncio.run(feed())
    return link, watcher


def _grey(jpeg: bytes) -> float:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (120, 160, 3)
    return float(image[60:, :].mean())  # below the caption band


def test_the_start_snapshot_is_the_best_frame_of_the_first_second(tmp_path: Path) -> None:
    # Frames 0-9 are the first second: frame 6 is its best; frame 15 is better still, but later.
    conf = [0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.9, 0.8, 0.5, 0.5, 0.4, 0.5, 0.6, 0.5, 0.6, 0.99, 0.5, 0.5]
    link, _ = _run(tmp_path, [*conf, *[0.0] * 15], enabled=True)
    detections = [Detection.model_validate_json(s.payload) for s in link.sent if s.topic == T.detections]
    start, end = detections
    assert start.snapshot is True and end.event == "end" and end.peak_confidence == 0.99
    (snap,) = [s for s in link.sent if s.topic.startswith(f"{T.detections}/snapshot/")]
    assert snap.topic == T.detection_snapshot(start.id) and snap.qos == 1
    assert len(snap.payload) <= 8000 and snap.payload[:2] == b"\xff\xd8"
    assert abs(_grey(snap.payload) - (20 + 10 * 6)) < 3, _grey(snap.payload)


def test_a_short_detection_gets_its_snapshot_and_a_run_that_never_started_gets_none(tmp_path: Path) -> None:
    conf = [0.5, 0.0, 0.8, 0.9, 0.0, 0.7, 0.95, 0.6, *[0.0] * 15]  # frames 0 and 2-3: too few; 5-7 start, end soon
    link, _ = _run(tmp_path, conf, enabled=True)
    snaps = [s for s in link.sent if "/snapshot/" in s.topic]
    (start,) = [Detection.model_validate_json(s.payload) for s in link.sent if s.topic == T.detections][:1]
    assert [s.topic for s in snaps] == [T.detection_snapshot(start.id)]
    assert abs(_grey(snaps[0].payload) - (20 + 10 * 6)) < 3


def test_no_snapshot_unless_enabled(tmp_path: Path) -> None:
    link, _ = _run(tmp_path, [0.9] * 15 + [0.0] * 15, enabled=False)
    starts = [Detection.model_validate_json(s.payload) for s in link.sent if s.topic == T.detections]
    assert starts and all(d.snapshot is None for d in starts)
    assert not [s for s in link.sent if "/snapshot/" in s.topic]
