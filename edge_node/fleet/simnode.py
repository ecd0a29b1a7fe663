"""One simulated node's behaviour, without I/O: the payloads it publishes and how it answers commands.

The numbers move like a real node's: a label holds for a few seconds, confidence jitters, FPS and latency
follow the resolution mode, and ``set_mode`` changes what the next prediction reports.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from edge_node import __version__
from edge_node.errors import CommandError
from edge_node.node import DISABLED, encode_snapshot
from edge_node.vision.modes import MODE_RESOLUTION
from edge_node.wire import (
    ClassScore,
    Event,
    Heartbeat,
    LatencyMs,
    Mode,
    ModelRef,
    NodeState,
    Ping,
    Prediction,
    PublishPolicy,
    SetMode,
    Snapshot,
    command_id,
    parse_command,
)

__all__ = ["Reply", "SimNode"]

_CLASSES = (
    (281, "tabby"),
    (207, "golden retriever"),
    (817, "sports car"),
    (430, "basketball"),
    (504, "coffee mug"),
    (508, "computer keyboard"),
    (851, "television"),
    (954, "banana"),
    (717, "pickup"),
    (670, "motor scooter"),
    (530, "digital clock"),
    (620, "laptop"),
)
_MODEL = ModelRef(name="sim-mobilenet", version="1.0.0", precision="int8")
_INFERENCE_MS = {224: 62.0, 192: 45.0, 160: 31.0}  # a Pi 4 running an INT8 MobileNet-class model


class Reply(NamedTuple):
    """A simulated node's answer to one control payload."""

    event: bytes
    state_changed: bool = False
    snapshot: bytes | None = None  # JPEG for the snapshot topic, published before the event


@dataclass
class SimNode:
    node_id: str
    rng: random.Random = field(default_factory=random.Random)
    mode: Mode = Mode.HIGH
    resolution: int = MODE_RESOLUTION[Mode.HIGH]
    model: ModelRef = field(default_factory=lambda: _MODEL)
    started: float = field(default_factory=time.monotonic)
    seq: int = 0
    snapshots: bool = True  # a simulated camera shows nobody, so snapshots are on
    _class: int = 0
    _class_until: float = 0.0

    def _scene(self, now: float) -> tuple[int, str]:
        if now >= self._class_until:
            self._class = self.rng.randrange(len(_CLASSES))
            self._class_until = now + self.rng.uniform(2.0, 8.0)
        return _CLASSES[self._class]

    def _inference_ms(self) -> float:
        return _INFERENCE_MS.get(self.resolution, 40.0) * self.rng.uniform(0.9, 1.15)

    def prediction(self, ts: float | None = None) -> bytes:
        now = time.time() if ts is None else ts
        class_id, label = self._scene(now)
        confidence = min(0.99, max(0.2, self.rng.gauss(0.82, 0.08)))
        runner_up_id, runner_up = _CLASSES[(self._class + 1) % len(_CLASSES)]
        second = round((1 - confidence) * 0.6, 4)
        inference = self._inference_ms()
        self.seq += 1
        return Prediction(
            node=self.node_id,
            seq=self.seq,
            ts=now,
            label=label,
            class_id=class_id,
            confidence=round(confidence, 4),
            top_k=[
                ClassScore(label=label, class_id=class_id, confidence=round(confidence, 4)),
                ClassScore(label=runner_up, class_id=runner_up_id, confidence=second),
            ],
            fps=round(1000.0 / (inference + 6.0), 2),
            latency_ms=LatencyMs(preprocess=3.1, inference=round(inference, 2), total=round(inference + 4.0, 2)),
            resolution=self.resolution,
            mode=self.mode,
            model=self.model,
        ).to_bytes()

    def heartbeat(self, ts: float | None = None, *, server: str | None = None, failovers: int = 0) -> bytes:
        uptime = time.monotonic() - self.started
        inference = self._inference_ms()
        fps = 1000.0 / (inference + 6.0)
        frames = int(uptime * fps)
        return Heartbeat(
            node=self.node_id,
            ts=time.time() if ts is None else ts,
            uptime_s=round(uptime, 1),
            fps=round(fps, 2),
            inference_ms_avg=round(inference, 2),
            cpu_percent=round(self.rng.uniform(60, 95), 1),
            cpu_temp_c=round(self.rng.uniform(52, 68), 1),
            rss_mb=round(self.rng.uniform(110, 130), 1),
            frames_captured=frames,
            frames_processed=frames,
            frames_dropped=0,
            reconnects=0,
            model_version=self.model.version,
            mode=self.mode,
            resolution=self.resolution,
            camera="ok",
            camera_last_frame_age_s=0.05,
            server=server,
            failovers=failovers,
        ).to_bytes()

    def state(self, ts: float | None = None) -> bytes:
        return NodeState(
            node=self.node_id,
            ts=time.time() if ts is None else ts,
            mode=self.mode,
            resolution=self.resolution,
            model=self.model,
            publish=PublishPolicy.RATE,
            publish_max_hz=10.0,
            version=__version__,
        ).to_bytes()

    def snapshot(self) -> bytes:
        """A JPEG of a made-up frame (a colour per label) captioned like a real node's."""
        class_id, label = _CLASSES[self._class]
        ramp = np.linspace(40, 220, 320)
        tint = np.array([(class_id * 37) % 200, (class_id * 91) % 200, (class_id * 53) % 200]) + 30
        frame = np.empty((240, 320, 3), np.uint8)
        frame[...] = (ramp[:, None] * tint[None, :] / 255).astype(np.uint8)[None, :, :]
        return encode_snapshot(frame, f"{label} (simulated)").data

    def handle(self, payload: bytes) -> Reply:
        """Answer a control payload: the event, whether the retained state changed, and any snapshot."""
        try:
            command = parse_command(payload)
        except CommandError as exc:
            ident, cmd = command_id(payload)
            return Reply(Event(id=ident, cmd=cmd, ok=False, error=str(exc)).to_bytes())
        if isinstance(command, SetMode):
            self.mode = command.mode
            self.resolution = MODE_RESOLUTION.get(command.mode, self.resolution)
            detail: dict[str, object] = {"mode": self.mode.value, "resolution": self.resolution}
            return Reply(Event(id=command.id, cmd=command.cmd, ok=True, detail=detail).to_bytes(), True)
        if isinstance(command, Ping):
            detail = {"uptime_s": round(time.monotonic() - self.started, 1), "simulated": True}
            return Reply(Event(id=command.id, cmd=command.cmd, ok=True, detail=detail).to_bytes())
        if isinstance(command, Snapshot):
            if not self.snapshots:
                return Reply(Event(id=command.id, cmd=command.cmd, ok=False, error=DISABLED).to_bytes())
            jpeg = self.snapshot()
            detail = {"bytes": len(jpeg), "simulated": True}
            return Reply(Event(id=command.id, cmd=command.cmd, ok=True, detail=detail).to_bytes(), snapshot=jpeg)
        error = f"{command.cmd} is not implemented by the simulator"
        return Reply(Event(id=command.id, cmd=command.cmd, ok=False, error=error).to_bytes())
