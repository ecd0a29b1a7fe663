"""Where the node's figures become wire messages: one mapping each for Prediction, Heartbeat and NodeState.

Everything inside the node speaks in plain snapshots (a Result, a PipelineSnapshot, a CameraSnapshot); the
pydantic wire models are built here, at the MQTT edge, and nowhere else. Predictions, one per frame, are also
encoded straight to bytes (:class:`PredictionEncoder`): the same bytes as the model's, for a fraction of the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pydantic_core

from edge_node import __version__
from edge_node.capture.grabber import CameraSnapshot
from edge_node.node.telemetry import CpuMeter, cpu_temperature, rss_mb
from edge_node.vision.model import ModelInfo
from edge_node.vision.pipeline import PipelineSnapshot, Result
from edge_node.vision.selection import Choice
from edge_node.wire import (
    ClassScore,
    DeviceChoice,
    Heartbeat,
    LatencyMs,
    ModelRef,
    NodeState,
    PipelineState,
    Prediction,
    PublishPolicy,
    ReferenceCheck,
    Trial,
    WorkerStatus,
)

__all__ = ["HeartbeatBuilder", "LinkFigures", "PredictionEncoder", "model_ref", "node_state", "prediction"]


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


class PredictionEncoder:
    """A Result as the bytes of its Prediction message: equal to ``prediction(node_id, r).to_bytes()``
    (tests/node/test_mapping.py holds it to that), at a tenth of the CPU: no pydantic models per frame.

    The message's fields in the model's order, with the same roundings, written into a template. Strings (labels,
    names) are encoded by pydantic-core once and remembered; a number is Python's shortest repr, which is the
    digits pydantic-core writes too, except in exponent notation or when not finite: those go through
    pydantic-core itself.
    """

    def __init__(self, node_id: str) -> None:
        self._node = _json_str(node_id)
        self._strings: dict[str, str] = {}  # label -> JSON string
        self._scores: dict[tuple[int, str], str] = {}  # (class id, label) -> a top-k entry's start
        self._model: tuple[ModelInfo, str] | None = None  # the last model's wire object, reused

    def __call__(self, r: Result) -> bytes:
        c = r.classification
        score = self._score
        top = ",".join([f"{score(s.class_id, s.label)}{_number(s.confidence)}}}" for s in c.top_k])
        best = c.best
        return (
            f'{{"node":{self._node},"seq":{r.seq:d},"ts":{_number(round(float(r.ts), 3))},'
            f'"label":{self._text(best.label)},"class_id":{best.class_id:d},"confidence":{_number(best.confidence)},'
            f'"top_k":[{top}],"fps":{_number(r.fps)},"latency_ms":{{"preprocess":{_number(round(c.preprocess_ms, 2))},'
            f'"inference":{_number(round(c.inference_ms, 2))},"total":{_number(round(r.total_ms, 2))}}},'
            f'"resolution":{c.resolution:d},"mode":{self._text(r.mode.value)},"model":{self._model_object(r.model)}}}'
        ).encode()

    def _score(self, class_id: int, label: str) -> str:
        """A top-k entry up to its confidence: ``{"label":...,"class_id":...,"confidence":``."""
        key = (class_id, label)
        encoded = self._scores.get(key)
        if encoded is None:
            if len(self._scores) >= 8192:
                self._scores.clear()
            encoded = self._scores[key] = f'{{"label":{_json_str(label)},"class_id":{class_id:d},"confidence":'
        return encoded

    def _text(self, value: str) -> str:
        encoded = self._strings.get(value)
        if encoded is None:
            if len(self._strings) >= 8192:  # a few models' labels; never grows without bound
                self._strings.clear()
            encoded = self._strings[value] = _json_str(value)
        return encoded

    def _model_object(self, info: ModelInfo) -> str:
        if self._model is None or self._model[0] != info:
            ref = {"name": info.name, "version": info.version, "precision": info.precision, "runtime": info.runtime}
            self._model = (info, pydantic_core.to_json(ref).decode())
        return self._model[1]


def _json_str(value: str) -> str:
    return pydantic_core.to_json(value).decode()


def _number(value: float) -> str:
    """A float field as pydantic-core writes it (non-finite as null, as ``model_dump_json`` does by default)."""
    text = repr(float(value))
    if "e" in text or "n" in text:  # 1e-05, 1e+16, inf, nan: pydantic-core's own notation
        return pydantic_core.to_json(float(value), inf_nan_mode="null").decode()
    return text


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
                divergence=None if k.divergence is None else round(k.divergence, 6),
                max_divergence=k.max_divergence,
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
