from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pytest

from edge_node.capture.base import EndOfStream, Frame
from edge_node.capture.factory import make_source
from edge_node.capture.grabber import Grabber, LatestSlot
from edge_node.capture.opencv import OpenCVSource
from edge_node.capture.picamera import Picamera2Source
from edge_node.capture.synthetic import SyntheticSource
from edge_node.config import CameraConfig
from edge_node.errors import CameraError, ConfigError, MissingExtraError


def test_slot_keeps_only_the_newest_frame_and_counts_drops() -> None:
    slot: LatestSlot[Frame] = LatestSlot()
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(5)]
    for f in frames:
        slot.put(f)
    got = slot.get(timeout=0.1)
    assert got is not None and got[0, 0, 0] == 4
    assert slot.dropped == 4
    assert slot.get(timeout=0.05) is None  # nothing new: no frame is handed out twice


def test_slot_wakes_a_waiting_consumer() -> None:
    slot: LatestSlot[Frame] = LatestSlot()
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(slot.get(timeout=2)))
    t.start()
    time.sleep(0.05)
    slot.put(np.zeros((1, 1, 3), np.uint8))
    t.join(2)
    assert out and out[0] is not None


def test_grabber_reports_ok_then_stalled_for_a_frozen_camera() -> None:
    g = Grabber(lambda: SyntheticSource(64, 48, 100, stall_after=5), stall_timeout=0.3, reopen_delay=0.1)
    g.start()
    try:
        deadline = time.monotonic() + 3
        while g.captured < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert g.captured == 5
        assert g.state() in ("ok", "stalled")
        time.sleep(0.5)
        assert g.state() == "stalled"
        age = g.frame_age()
        assert age is not None and age > 0.3
    finally:
        g.stop()
    assert g.state() == "stopped"


def test_grabber_reopens_a_source_that_fails(tmp_path: Path) -> None:
    opened = []

    class Flaky:
        name = "flaky"

        def open(self) -> None:
            opened.append(1)
            if len(opened) == 1:
                raise CameraError("no camera yet")

        def read(self) -> np.ndarray:
            time.sleep(0.01)
            return np.zeros((4, 4, 3), np.uint8)

        def close(self) -> None:
            pass

    g = Grabber(Flaky, stall_timeout=1, reopen_delay=0.05)
    g.start()
    try:
        deadline = time.monotonic() + 3
        while g.captured == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(opened) >= 2 and g.captured > 0 and g.state() == "ok"
    finally:
        g.stop()


def test_on_demand_synthetic_source_drops_nothing() -> None:
    g = Grabber(
        lambda: make_source(CameraConfig(source="synthetic:on_demand", width=32, height=24)),
        stall_timeout=1,
        reopen_delay=0.1,
    )
    g.start()
    try:
        taken = [g.slot.get(timeout=1) for _ in range(50)]
    finally:
        g.stop()
    assert all(f is not None for f in taken) and g.slot.dropped == 0


def test_folder_source_order(tmp_path: Path) -> None:
    for name, value in [("b.png", 20), ("a.png", 10), ("c.png", 30)]:
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
    src = make_source(CameraConfig(source=f"dir:{tmp_path}", fps=1000))
    src.open()
    values = []
    for _ in range(4):
        frame = src.read()
        assert frame is not None
        values.append(int(frame[0, 0, 0]))
    src.close()
    assert values == [10, 20, 30, 10]


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no readable images"):
        make_source(CameraConfig(source=f"dir:{tmp_path}")).open()
    with pytest.raises(CameraError, match="does not exist"):
        make_source(CameraConfig(source=f"dir:{tmp_path}/nope")).open()


def _clip(path: Path, frames: int, fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * (i + 1), np.uint8))
    writer.release()
    return path


def test_video_file_plays_at_its_own_rate_then_ends(tmp_path: Path) -> None:
    src = make_source(CameraConfig(source=str(_clip(tmp_path / "clip.avi", 6, 20.0))))
    assert isinstance(src, OpenCVSource)
    src.open()
    start = time.monotonic()
    frames = [src.read() for _ in range(6)]
    elapsed = time.monotonic() - start
    with pytest.raises(EndOfStream):
        src.read()
    src.close()
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)
    assert elapsed >= 5 / 20.0 * 0.9  # paced at the file's 20 fps, not as fast as it decodes


def test_an_explicit_fps_overrides_the_files_rate(tmp_path: Path) -> None:
    src = make_source(CameraConfig(source=str(_clip(tmp_path / "clip.avi", 6, 2.0)), fps=1000))
    src.open()
    start = time.monotonic()
    for _ in range(6):
        src.read()
    src.close()
    assert time.monotonic() - start < 1.0  # at 2 fps this would take 2.5 s


@pytest.mark.parametrize("at_end", ["loop", "stop"])
def test_grabber_loops_a_video_file_or_stops_at_its_end(tmp_path: Path, at_end: Literal["loop", "stop"]) -> None:
    clip = _clip(tmp_path / "clip.avi", 3, 100.0)
    g = Grabber(lambda: make_source(CameraConfig(source=str(clip))), stall_timeout=1, reopen_delay=0.05, at_end=at_end)
    g.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (g.captured >= 9 or g.state() == "ended"):
            time.sleep(0.02)
        snap = g.snapshot()
    finally:
        g.stop()
    if at_end == "loop":
        assert snap.captured >= 9 and snap.ends >= 2 and snap.state == "ok" and snap.failures == 0
    else:
        assert snap.captured == 3 and snap.ends == 1 and snap.state == "ended"


def test_unknown_sources_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="neither a known source"):
        make_source(CameraConfig(source="/no/such/video.mp4"))
    with pytest.raises(ConfigError, match="options are"):
        make_source(CameraConfig(source="synthetic:turbo"))


class FakePicamera2:
    """Stand-in for picamera2.Picamera2: records the configuration, returns BGRX frames."""

    instances: list[FakePicamera2] = []

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.started = self.closed = False
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
        return kw

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self, stream: str) -> np.ndarray:
        assert stream == "main" and self.config is not None
        w, h = self.config["main"]["size"]
        return np.full((h, w, 4), 7, np.uint8)

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


def test_picamera2_adapter_configures_bgr_video_and_strips_padding() -> None:
    module = type("picamera2", (), {"Picamera2": FakePicamera2})
    src = Picamera2Source(320, 240, 15, module=module)
    src.open()
    cam = FakePicamera2.instances[-1]
    assert cam.started and cam.config is not None
    assert cam.config["main"] == {"size": (320, 240), "format": "RGB888"}
    assert cam.config["controls"]["FrameRate"] == 15.0
    frame = src.read()
    assert frame is not None and frame.shape == (240, 320, 3)
    src.close()
    assert cam.closed


def test_picamera2_missing_is_a_clear_error() -> None:
    src = make_source(CameraConfig(source="picamera2"))
    with pytest.raises(MissingExtraError, match="'pi' extra"):
        src.open()


def test_demo_source_shows_the_bundled_photos() -> None:
    pytest.importorskip("skimage")
    src = make_source(CameraConfig(source="demo", fps=1000))
    src.open()
    frame = src.read()
    src.close()
    assert frame is not None and frame.shape == (300, 451, 3)  # chelsea the cat comes first
