"""Snapshots: the pure JPEG encoder, the Snapshot command, the simulator's answer and ``ctl snapshot``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_node.config import SnapshotConfig
from edge_node.errors import SnapshotError
from edge_node.fleet.ctl import Answer, Tracker, save_snapshots
from edge_node.fleet.simnode import SimNode
from edge_node.messages import Event, Snapshot, parse_command
from edge_node.snapshot import DISABLED, caption_for, encode_snapshot, take_snapshot
from edge_node.topics import Topics
from tests.support.brokers import Mosquitto


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random pixels: the worst case for JPEG, far above 50 KB at any usual quality."""
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG OpenCV can read"
    return image


def test_a_smooth_frame_keeps_its_size_and_a_high_quality() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 1] = np.linspace(0, 255, 640, dtype=np.uint8)[None, :]
    jpeg = encode_snapshot(frame, "tabby 87%")
    assert jpeg.data[:2] == b"\xff\xd8" and len(jpeg.data) <= 50_000
    assert (jpeg.width, jpeg.height, jpeg.quality) == (640, 480, 85)
    assert _decode(jpeg.data).shape == (480, 640, 3)
    assert jpeg.detail() == {"bytes": len(jpeg.data), "width": 640, "height": 480, "quality": 85}


def test_noise_shrinks_quality_then_size_until_it_fits() -> None:
    frame = _noise(1080, 1920)
    jpeg = encode_snapshot(frame, "x", max_bytes=50_000, max_width=1280)
    assert len(jpeg.data) <= 50_000
    assert jpeg.width < 1280  # the lowest quality was still too big, so it shrank
    assert jpeg.height == round(1080 * jpeg.width / 1920)
    assert _decode(jpeg.data).shape[:2] == (jpeg.height, jpeg.width)
    small = encode_snapshot(frame, "x", max_bytes=5000)
    assert len(small.data) <= 5000 and small.width < jpeg.width


def test_the_caption_is_drawn_on_the_image() -> None:
    frame = np.full((240, 320, 3), 128, np.uint8)
    plain = _decode(encode_snapshot(frame, "").data).astype(int)
    labelled = _decode(encode_snapshot(frame, "golden retriever 91%").data).astype(int)
    band = np.abs(labelled[:20] - plain[:20]).max(axis=2)
    assert (band > 100).sum() > 100  # white strokes on the darkened band (189 px here)
    assert np.abs(labelled[120:] - plain[120:]).max() < 12  # the rest of the picture is untouched


def test_captions_are_ascii_and_say_when_there_is_no_label() -> None:
    assert caption_for("tabby", 0.873) == "tabby 87%"
    assert caption_for("café", None) == "caf?"
    assert caption_for(None, None) == "no prediction yet"


def test_bad_input_and_impossible_budgets_raise_snapshot_errors() -> None:
    with pytest.raises(SnapshotError, match="HxWx3"):
        encode_snapshot(np.zeros((10, 10), np.uint8), "x")
    with pytest.raises(SnapshotError, match="raise the limit"):
        encode_snapshot(_noise(480, 640), "x", max_bytes=300)


def test_take_snapshot_is_refused_unless_enabled_and_says_which_setting() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(SnapshotError) as info:
        take_snapshot(SnapshotConfig(), frame, "tabby", 0.9, "ok")
    assert str(info.value) == DISABLED and "EDGE_SNAPSHOT__ENABLED=true" in DISABLED
    with pytest.raises(SnapshotError, match=r"no camera frame.*stalled"):
        take_snapshot(SnapshotConfig(enabled=True), None, None, None, "stalled")
    jpeg = take_snapshot(SnapshotConfig(enabled=True, max_width=32 * 2), frame, "tabby", 0.9, "ok")
    assert jpeg.width == 64


def test_snapshot_command_and_topic() -> None:
    assert parse_command(b'{"cmd": "snapshot", "id": "s1"}') == Snapshot(cmd="snapshot", id="s1")
    assert Topics("ghostpi", "cam").snapshot == "ghostpi/cam/snapshot"


def test_the_simulator_answers_with_a_jpeg_or_refuses_like_a_disabled_node() -> None:
    reply = SimNode("sim-001").handle(b'{"cmd": "snapshot", "id": "s"}')
    event = Event.model_validate_json(reply.event)
    assert event.ok and event.id == "s" and reply.snapshot is not None and not reply.state_changed
    assert len(reply.snapshot) <= 50_000 and _decode(reply.snapshot).shape == (240, 320, 3)
    refused = SimNode("sim-002", snapshots=False).handle(b'{"cmd": "snapshot"}')
    assert refused.snapshot is None and Event.model_validate_json(refused.event).error == DISABLED


def test_ctl_tracker_waits_for_the_jpeg_and_saves_it(tmp_path: Path) -> None:
    t = Tracker("gp", "c1")
    t.expected.update({"a", "b"})
    t.feed("gp/a/events", Event(id="c1", cmd="snapshot", ok=True).to_bytes())
    t.feed("gp/b/events", Event(id="c1", cmd="snapshot", ok=False, error=DISABLED).to_bytes())
    assert not t.done()  # a answered, but its JPEG is not here yet
    t.feed("gp/a/snapshot", b"\xff\xd8jpeg")
    assert t.done()
    a, b = t.results()
    assert a.snapshot == b"\xff\xd8jpeg" and b.snapshot is None
    one = save_snapshots([a], tmp_path / "a.jpg", fleet=False)
    assert one == [("a", tmp_path / "a.jpg")] and (tmp_path / "a.jpg").read_bytes() == b"\xff\xd8jpeg"
    many = save_snapshots([a, b, Answer("c")], tmp_path / "all", fleet=True)
    assert many == [("a", tmp_path / "all" / "a-snapshot.jpg")]


@pytest.mark.timeout(90)
def test_ctl_snapshot_saves_the_fleet_jpegs_and_a_real_node_refuses_by_default(
    mosquitto: Mosquitto, node_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.support.fleet_procs import Simulator, edge_env
    from tests.support.nodeproc import Collector, NodeProcess

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "edge_node", "ctl", *args]
        return subprocess.run(cmd, env=edge_env(mosquitto.port), cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    sim = Simulator(mosquitto.port, tmp_path, "--nodes", "2", "--rate", "2")
    try:
        sim.wait_event("online", timeout=30)
        out = ctl("all", "snapshot", "--out", str(tmp_path / "shots"))
        assert out.returncode == 0, out.stderr
        for sim_id in ("sim-001", "sim-002"):
            jpeg = (tmp_path / "shots" / f"{sim_id}-snapshot.jpg").read_bytes()
            assert _decode(jpeg).shape == (240, 320, 3) and f"{sim_id}: saved" in out.stderr
    finally:
        sim.close()

    node = NodeProcess(node_env, tmp_path / "node").start()  # EDGE_SNAPSHOT__ENABLED is not set
    bus = Collector(mosquitto.port, ("ghostpi/node-t/predictions",))
    try:
        bus.wait("ghostpi/node-t/predictions", timeout=40)  # subscribed and serving
        out = ctl("node-t", "snapshot", "--timeout", "40")
        assert out.returncode == 1, out.stdout + out.stderr + node.log()[-2000:]
        assert out.stdout.strip() == f"node-t: FAILED snapshot: {DISABLED}"
        assert not list(tmp_path.glob("node-t*.jpg"))
    finally:
        bus.close()
        node.terminate()
