"""The node's self-supervision as pure logic: snapshots and times in, events and restarts out."""

from __future__ import annotations

from dataclasses import replace

from edge_node.capture.grabber import CameraSnapshot
from edge_node.config import SupervisorConfig
from edge_node.domain import Mode
from edge_node.supervisor import Health
from edge_node.vision.model import ModelInfo
from edge_node.vision.pipeline import PipelineSnapshot

CFG = SupervisorConfig(stall_timeout=5.0, max_restarts=2, restart_window=100.0)
CAM = CameraSnapshot("ok", captured=0, dropped=0, failures=0, last_error=None, ends=0, restarts=0, frame_age=0.0)
PIPE = PipelineSnapshot(
    fps=30.0,
    processed=0,
    failed=0,
    inference_ms=5.0,
    preprocess_ms=0.2,
    serving=224,
    resolution=224,
    mode=Mode.HIGH,
    model=ModelInfo("m", "1", "int8", "onnxruntime"),
    workers=(),
    restarts=0,
    last_error=None,
)


def _run(health: Health, seconds: range, *, processing: bool, failing: bool = False) -> list[str]:
    """Feed one snapshot per second: the camera delivers 30 frames/s; the pipeline processes them or not."""
    causes = []
    for t in seconds:
        cam = replace(CAM, captured=30 * t)
        processed = 30 * t if processing else 30
        pipe = replace(
            PIPE, processed=processed, failed=30 * t if failing else 0, last_error="boom" if failing else None
        )
        d = health.update(float(t), cam, pipe)
        causes += [e.cmd for e in d.events]
        if d.restart_pipeline:
            causes.append("<restart>")
    return causes


def test_a_pipeline_that_stops_while_the_camera_delivers_is_reported_and_restarted() -> None:
    h = Health(CFG, camera_stall=5.0)
    assert _run(h, range(1, 5), processing=True) == [] and h.pipeline == "ok"
    causes = _run(h, range(5, 12), processing=False, failing=True)
    stalled = causes.index("pipeline_stalled")
    assert causes[stalled : stalled + 3] == ["pipeline_stalled", "pipeline_restarted", "<restart>"], causes
    assert (h.pipeline, h.failed) == ("stalled", False)  # a tuple: mypy keeps no narrowing of h.pipeline from above
    assert "frame_errors" in causes
    assert _run(h, range(12, 14), processing=True) == ["pipeline_recovered"]
    assert h.pipeline == "ok"


def test_restarts_back_off_and_give_up_to_the_watchdog() -> None:
    h = Health(CFG, camera_stall=5.0)
    _run(h, range(1, 3), processing=True)
    causes = _run(h, range(3, 60), processing=False)
    restarts = [i for i, c in enumerate(causes) if c == "<restart>"]
    assert len(restarts) >= 2 and causes.count("pipeline_failed") == 1, causes
    assert h.failed and h.pipeline == "failed"
    assert causes.index("pipeline_failed") > restarts[1]  # the budget of 2 was used before giving up


def test_a_fault_that_returns_after_each_restart_still_ends_in_the_last_resort() -> None:
    h = Health(CFG, camera_stall=5.0)
    t = 0
    for _ in range(3):  # recovers for a while after each restart, then stalls again
        _run(h, range(t, t + 3), processing=True)
        _run(h, range(t + 3, t + 12), processing=False)
        t += 12
    assert h.failed


def test_a_silent_camera_is_not_blamed_on_the_pipeline() -> None:
    h = Health(CFG, camera_stall=5.0)
    _run(h, range(1, 3), processing=True)
    causes = []
    for t in range(3, 20):  # no new frames, no processing: the camera's problem
        d = h.update(float(t), replace(CAM, captured=60, state="error", failures=1), replace(PIPE, processed=60))
        causes += [e.cmd for e in d.events]
        assert not d.restart_pipeline
    assert h.pipeline == "ok" and "pipeline_stalled" not in causes


def test_camera_lost_recovered_and_end_of_file_are_events_with_the_reason() -> None:
    h = Health(CFG, camera_stall=5.0)
    h.update(0.0, CAM, PIPE)
    lost = h.update(1.0, replace(CAM, state="error", failures=1, last_error="cannot open /dev/video0"), PIPE)
    assert [(e.cmd, e.error) for e in lost.events] == [("camera_lost", "cannot open /dev/video0")]
    again = h.update(2.0, replace(CAM, state="error", failures=2, last_error="cannot open /dev/video0"), PIPE)
    assert again.events == []  # one event per loss, not per retry
    back = h.update(3.0, replace(CAM, failures=2, captured=5), PIPE)
    assert [e.cmd for e in back.events] == ["camera_recovered"]
    end = h.update(4.0, replace(CAM, failures=2, captured=9, ends=1), PIPE)
    assert [(e.cmd, e.detail) for e in end.events] == [
        ("camera_end", {"reason": "end of the video file", "action": "loop"})
    ]


def test_a_camera_stuck_in_its_driver_is_restarted_then_left_to_the_watchdog() -> None:
    h = Health(CFG, camera_stall=1.0)
    h.update(0.0, CAM, PIPE)
    causes, restarts = [], 0
    for t in range(1, 30):
        d = h.update(float(t), replace(CAM, state="stalled", frame_age=float(t)), PIPE)
        causes += [e.cmd for e in d.events]
        restarts += d.restart_camera
    assert causes[0] == "camera_stalled" and restarts == 2 and causes[-1] == "camera_failed", causes
    assert h.failed
