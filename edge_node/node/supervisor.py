"""The node watching itself: camera and pipeline snapshots in, events and restarts out.

:class:`Health` is pure (time and snapshots are passed in). It reports what changed as events, asks for a
restart of a pipeline that produces nothing while the camera delivers (or of a capture thread stuck in its
driver), and only when restarts keep failing declares the node failed, which stops the systemd watchdog pings:
systemd's restart is the last resort, not the first. :func:`supervise` runs it once a second on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_node.capture.grabber import CameraSnapshot
from edge_node.config import SupervisorConfig
from edge_node.vision.pipeline import PipelineSnapshot
from edge_node.wire import Event, PipelineState

__all__ = ["Decision", "Health", "supervise"]

log = logging.getLogger(__name__)

FRAME_ERROR_EVERY = 30.0  # seconds between two events about failing frames


@dataclass(slots=True)
class Decision:
    events: list[Event] = field(default_factory=list)
    restart_pipeline: bool = False
    restart_camera: bool = False


@dataclass
class _Budget:
    """At most ``limit`` restarts within ``window`` seconds, whether or not each one helped for a while: a fault
    that comes back after every restart must end in the last resort, not in restarts forever."""

    limit: int
    window: float
    stamps: deque[float] = field(default_factory=deque)

    def spent(self, now: float) -> bool:
        while self.stamps and now - self.stamps[0] > self.window:
            self.stamps.popleft()
        return len(self.stamps) >= self.limit

    def take(self, now: float) -> None:
        self.stamps.append(now)


class Health:
    """Decides, from successive snapshots, what the node should report and restart."""

    def __init__(self, cfg: SupervisorConfig, *, camera_stall: float, at_end: str = "loop") -> None:
        self.cfg = cfg
        self.camera_stall = camera_stall
        self.at_end = at_end
        self.pipeline: PipelineState = "starting"
        self.restarts = {"pipeline": 0, "camera": 0}
        self._pipeline_budget = _Budget(cfg.max_restarts, cfg.restart_window)
        self._camera_budget = _Budget(cfg.max_restarts, cfg.restart_window)
        self._camera_failed = False
        self._prev_cam = CameraSnapshot("starting", 0, 0, 0, None, 0, 0, None)  # counters start at zero
        self._prev_pipe: PipelineSnapshot | None = None
        self._camera_trouble: str | None = None  # "lost" or "stalled" until frames flow again
        self._progress_at: float | None = None  # when a frame was last processed (or watching began)
        self._captured_at_progress = 0
        self._last_restart = float("-inf")
        self._last_camera_restart = float("-inf")
        self._errors_reported = 0
        self._errors_event_at = float("-inf")

    @property
    def failed(self) -> bool:
        """True once restarts no longer help: the watchdog pings stop, so systemd restarts the process."""
        return self.pipeline == "failed" or self._camera_failed

    def update(self, now: float, cam: CameraSnapshot, pipe: PipelineSnapshot) -> Decision:
        out = Decision()
        self._camera(now, cam, out)
        self._pipeline_progress(now, cam, pipe, out)
        self._frame_errors(now, pipe, out)
        self._prev_cam, self._prev_pipe = cam, pipe
        return out

    # --- camera ------------------------------------------------------------------------------------------

    def _camera(self, now: float, cam: CameraSnapshot, out: Decision) -> None:
        prev = self._prev_cam
        if cam.ends > prev.ends:
            action = {"loop": "playing it again", "stop": "capture stopped", "exit": "the node stops"}[self.at_end]
            out.events.append(
                Event(cmd="camera_end", ok=True, detail={"reason": "end of the video file", "action": self.at_end})
            )
            log.info("end of the video file: %s", action)
        failed_again = cam.failures > prev.failures
        if failed_again and self._camera_trouble != "lost":
            self._camera_trouble = "lost"
            out.events.append(Event(cmd="camera_lost", ok=False, error=cam.last_error, detail={"state": cam.state}))
        elif cam.state == "stalled" and self._camera_trouble is None:
            self._camera_trouble = "stalled"
            age = round(cam.frame_age or 0.0, 1)
            out.events.append(
                Event(cmd="camera_stalled", ok=False, error=f"no frame for {age} s", detail={"state": cam.state})
            )
        if cam.state == "ok" and self._camera_trouble is not None:
            out.events.append(Event(cmd="camera_recovered", ok=True, detail={"after": self._camera_trouble}))
            self._camera_trouble = None
            self._camera_failed = False
        # A capture thread stuck in its driver never returns to reopen the source: restart it.
        stuck = cam.state == "stalled" and (cam.frame_age or 0.0) > 2 * self.camera_stall
        if stuck and now - self._last_camera_restart > 2 * self.camera_stall:
            if self._camera_budget.spent(now):
                if not self._camera_failed:
                    self._camera_failed = True
                    out.events.append(self._gave_up("camera", cam.last_error or "no frames"))
            else:
                self._camera_budget.take(now)
                self._last_camera_restart = now
                self.restarts["camera"] += 1
                out.restart_camera = True
                out.events.append(Event(cmd="camera_restarted", ok=True, detail={"restarts": self.restarts["camera"]}))

    # --- pipeline ----------------------------------------------------------------------------------------

    def _pipeline_progress(self, now: float, cam: CameraSnapshot, pipe: PipelineSnapshot, out: Decision) -> None:
        prev = self._prev_pipe
        if self._progress_at is None or (prev is not None and pipe.processed > prev.processed):
            self._progress_at = now
            self._captured_at_progress = cam.captured
            if self.pipeline in ("stalled", "failed") and prev is not None:
                out.events.append(
                    Event(cmd="pipeline_recovered", ok=True, detail={"restarts": self.restarts["pipeline"]})
                )
            if pipe.processed > 0:
                self.pipeline = "ok"
            return
        camera_delivers = cam.captured > self._captured_at_progress and cam.state == "ok"
        if not camera_delivers or now - self._progress_at < self.cfg.stall_timeout:
            return
        if self.pipeline not in ("stalled", "failed"):
            self.pipeline = "stalled"
            idle = round(now - self._progress_at, 1)
            out.events.append(
                Event(
                    cmd="pipeline_stalled",
                    ok=False,
                    error=f"no frame processed for {idle} s while the camera delivers; last error: {pipe.last_error}",
                    detail={"processed": pipe.processed, "failed": pipe.failed},
                )
            )
        # Restart at once, then less and less often while it does not help.
        if now - self._last_restart < self.cfg.stall_timeout * (1 + len(self._pipeline_budget.stamps)):
            return
        if self._pipeline_budget.spent(now):
            if self.pipeline != "failed":
                self.pipeline = "failed"
                out.events.append(self._gave_up("pipeline", pipe.last_error or "no frames processed"))
            if now - self._last_restart < self.cfg.restart_window / self.cfg.max_restarts:
                return  # failed: keep trying, but rarely (there may be no systemd to restart us)
        else:
            self._pipeline_budget.take(now)
        self._last_restart = now
        self.restarts["pipeline"] += 1
        out.restart_pipeline = True
        out.events.append(Event(cmd="pipeline_restarted", ok=True, detail={"restarts": self.restarts["pipeline"]}))

    def _frame_errors(self, now: float, pipe: PipelineSnapshot, out: Decision) -> None:
        new = pipe.failed - self._errors_reported
        if new <= 0 or now - self._errors_event_at < FRAME_ERROR_EVERY:
            return
        self._errors_reported, self._errors_event_at = pipe.failed, now
        out.events.append(
            Event(cmd="frame_errors", ok=False, error=pipe.last_error, detail={"frames": new, "total": pipe.failed})
        )

    def _gave_up(self, what: str, error: str) -> Event:
        log.error("%s keeps failing after %d restarts: %s", what, self.cfg.max_restarts, error)
        return Event(
            cmd=f"{what}_failed",
            ok=False,
            error=f"{error}; {self.cfg.max_restarts} restarts within {self.cfg.restart_window:.0f} s did not help. "
            "Watchdog pings stop, so systemd restarts the node",
            detail={"restarts": self.restarts[what]},
        )


async def supervise(
    health: Health,
    *,
    camera: Callable[[], CameraSnapshot],
    pipeline: Callable[[], PipelineSnapshot],
    emit: Callable[[Event], None],
    restart_pipeline: Callable[[], None],
    restart_camera: Callable[[], None],
    alive: Callable[[], None],
    clock: Callable[[], float],
    period: float = 1.0,
) -> None:
    """Check once per ``period`` until cancelled; restarts run off the loop (they join threads)."""
    while True:
        await asyncio.sleep(period)
        decision = health.update(clock(), camera(), pipeline())
        for event in decision.events:
            log.log(logging.INFO if event.ok else logging.WARNING, "%s: %s", event.cmd, event.error or event.detail)
            emit(event)
        if decision.restart_camera:
            await asyncio.to_thread(restart_camera)
        if decision.restart_pipeline:
            await asyncio.to_thread(restart_pipeline)
        if not health.failed:
            alive()
