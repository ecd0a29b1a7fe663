"""Where the node's figures become wire messages: one mapping each for Prediction, Heartbeat and NodeState.

Everything inside the node speaks in plain snapshots (a Result, a PipelineSnapshot, a CameraSnapshot); the
pydantic wire models are built here, at the MQTT edge, and nowhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edge_node import __version__
from edge_node.capture.grabber import CameraSnapshot
from edge_node.domain import PublishPolicy
from edge_node.messages import (
    ClassScore,
    DeviceChoice,
    Heartbeat,
    LatencyMs,
    ModelRef,
    NodeState,
    PipelineState,
    Prediction,
    ReferenceCheck,
    Trial,
    WorkerStatus,
)
from edge_node.telemetry import CpuMeter, cpu_temperature, rss_mb
from edge_node.vision.model import ModelInfo
from edge_node.vision.pipeline import PipelineSnapshot, Result
from edge_node.vision.selection import Choice

__all__ = ["HeartbeatBuilder", "LinkFigures", "model_ref", "node_state", "prediction"]


def model_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version, precision=info.precision, runtime=info.runtime)


def prediction(node_id: str, r: Result) -> Prediction:
    c = r.classification
    best = c.best
    return Prediction(
        node=node_id,
        seq=r.seq,
        ts=round(r.ts, 3),
        label=best.label,
        class_id=best.class_id,
        confidence=best.confidence,
        top_k=[ClassScore(label=s.label, class_id=s.class_id, confidence=s.confidence) for s in c.top_k],
        fps=r.fps,
        latency_ms=LatencyMs(
            preprocess=round(c.preprocess_ms, 2),
            inference=round(c.inference_ms, 2),
            total=round(r.total_ms, 2),
        ),
        resolution=c.resolution,
        mode=r.mode,
        model=model_ref(r.model),
    )


def device_choice(choice: Choice | None) -> DeviceChoice | None:
    if choice is None:
        return None
    c = choice.candidate
    return DeviceChoice(
        runtime=c.runtime,
        precision=c.precision,
        workers=c.workers,
        threads=c.threads,
        cached=choice.cached,
        note=choice.note,
        checks=[
            ReferenceCheck(
                runtime=k.runtime,
                resolution=k.resolution,
                agreement=round(k.agreement, 4),
                gate=k.gate,
                passed=k.passed,
                error=k.error,
            )
            for k in choice.checks
        ],
        trials=[Trial.model_validate(t.as_dict()) for t in choice.trials],
    )


def node_state(node_id: str, pipe: PipelineSnapshot, policy: PublishPolicy, max_hz: float) -> NodeState:
    return NodeState(
        node=node_id,
        ts=round(time.time(), 3),
        mode=pipe.mode,
        resolution=pipe.resolution,
        model=model_ref(pipe.model),
        publish=policy,
        publish_max_hz=max_hz,
        version=__version__,
        device=device_choice(pipe.choice),
    )


@dataclass(frozen=True, slots=True)
class LinkFigures:
    reconnects: int
    dropped_offline: dict[str, int]
    denied: int
    offline_s: float = 0.0
    server: str | None = None
    failovers: int = 0


class HeartbeatBuilder:
    """Builds heartbeats; remembers the previous one's worker figures, so each reports its own interval."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.started = time.monotonic()
        self._cpu = CpuMeter()
        self._prev: tuple[float, tuple[tuple[float, int], ...]] = (self.started, ())

    def build(
        self,
        *,
        pipe: PipelineSnapshot,
        cam: CameraSnapshot,
        link: LinkFigures,
        pipeline_state: PipelineState,
        restarts: dict[str, int],
        model_source: str,
    ) -> Heartbeat:
        now = time.monotonic()
        return Heartbeat(
            node=self.node_id,
            ts=round(time.time(), 3),
            uptime_s=round(now - self.started, 1),
            fps=round(pipe.fps, 2),
            inference_ms_avg=round(pipe.inference_ms, 2),
            cpu_percent=self._cpu.percent(),
            cpu_temp_c=cpu_temperature(),
            rss_mb=rss_mb(),
            frames_captured=cam.captured,
            frames_processed=pipe.processed,
            frames_dropped=cam.dropped,
            reconnects=link.reconnects,
            model_version=pipe.model.version,
            model_source=model_source,
            runtime=pipe.model.runtime,
            precision=pipe.model.precision,
            model_check=pipe.choice.note if pipe.choice is not None else None,
            mode=pipe.mode,
            resolution=pipe.resolution,
            camera=cam.state,
            camera_last_frame_age_s=None if cam.frame_age is None else round(cam.frame_age, 2),
            pipeline=pipeline_state,
            frames_failed=pipe.failed,
            restarts={k: v for k, v in restarts.items() if v},
            last_error=pipe.last_error or cam.last_error,
            workers=self._workers(now, pipe),
            dropped_offline={k: v for k, v in link.dropped_offline.items() if v},
            offline_s=round(link.offline_s, 1),
            publish_denied=link.denied,
            server=link.server,
            failovers=link.failovers,
        )

    def _workers(self, now: float, pipe: PipelineSnapshot) -> list[WorkerStatus]:
        """Each worker's busy share and frames since the previous heartbeat (counters restart with the pipeline)."""
        then, prev = self._prev
        current = tuple((w.busy_s, w.frames) for w in pipe.workers)
        self._prev = (now, current)
        span = max(now - then, 1e-6)
        out = []
        for i, (busy, frames) in enumerate(current):
            busy0, frames0 = prev[i] if i < len(prev) and prev[i][1] <= frames else (0.0, 0)
            out.append(
                WorkerStatus(busy_percent=round(min(100.0, 100.0 * (busy - busy0) / span), 1), frames=frames - frames0)
            )
        return out
