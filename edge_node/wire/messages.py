"""Typed wire messages: every payload the node publishes or accepts.

Published models serialise with ``to_bytes``; commands arrive as a discriminated union on ``cmd``.
docs/mqtt-api.md shows an example of each.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Literal, get_args

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from edge_node.errors import CommandError
from edge_node.wire.domain import Mode, PublishPolicy
from edge_node.wire.watch import WatchRules, WatchState

__all__ = [
    "OFFLINE",
    "ONLINE",
    "Camera",
    "ClassScore",
    "Command",
    "DeviceChoice",
    "Event",
    "Heartbeat",
    "LatencyMs",
    "ModelRef",
    "NodeState",
    "OtaPhase",
    "OtaStatus",
    "Ping",
    "PipelineState",
    "Prediction",
    "ReferenceCheck",
    "Rollback",
    "SetMode",
    "SetPublish",
    "SetWatch",
    "Snapshot",
    "Trial",
    "UpdateModel",
    "WorkerStatus",
    "command_id",
    "parse_command",
    "parse_mode_select",
]


# Payloads of the retained ``<prefix>/<node>/status`` topic: "online" on connect, "offline" as the will and
# on a clean shutdown.
ONLINE = b"online"
OFFLINE = b"offline"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class ClassScore(_Wire):
    label: str
    class_id: int
    confidence: float


class LatencyMs(_Wire):
    preprocess: float
    inference: float
    total: float


class ModelRef(_Wire):
    name: str
    version: str
    precision: str
    runtime: str = "onnxruntime"


class Prediction(_Wire):
    node: str
    seq: int
    ts: float
    label: str
    class_id: int
    confidence: float
    top_k: list[ClassScore]
    fps: float
    latency_ms: LatencyMs
    resolution: int
    mode: Mode
    model: ModelRef


Camera = Literal["starting", "ok", "stalled", "error", "ended", "stopped"]
PipelineState = Literal["starting", "ok", "stalled", "failed"]


class WorkerStatus(_Wire):
    """One inference worker over the last heartbeat interval."""

    busy_percent: float
    frames: int


class Heartbeat(_Wire):
    node: str
    ts: float
    uptime_s: float
    fps: float
    inference_ms_avg: float
    cpu_percent: float
    cpu_temp_c: float | None = None
    rss_mb: float
    frames_captured: int
    frames_processed: int
    frames_dropped: int
    reconnects: int
    model_version: str
    model_source: str = "active"  # active, previous or factory: where start-up found a valid bundle
    runtime: str | None = None
    precision: str | None = None
    model_check: str | None = None  # why the node does not serve its preferred INT8 file (failed on-device check)
    mode: Mode
    resolution: int
    camera: Camera
    camera_last_frame_age_s: float | None = None
    pipeline: PipelineState = "ok"
    frames_failed: int = 0
    restarts: dict[str, int] = Field(default_factory=dict)  # pipeline / camera restarts by the node itself
    last_error: str | None = None
    workers: list[WorkerStatus] = Field(default_factory=list)
    dropped_offline: dict[str, int] = Field(default_factory=dict)  # messages not sent while the broker was away
    offline_s: float = 0.0  # seconds without the broker since the first connect, all gaps summed
    publish_denied: int = 0  # publishes the broker refused (MQTT 5 reason codes; 3.1.1 cannot tell)
    server: str | None = None  # host:port of the MQTT server this node is connected to (EDGE_MQTT__HOSTS)
    failovers: int = 0  # connections made to another server than the one before
    detections: dict[str, int] = Field(default_factory=dict)  # detections started per watch rule since start


class Trial(_Wire):
    """One candidate measured on the device: every worker running its own session at once, inference only."""

    runtime: str
    precision: str
    workers: int
    threads: int  # per worker
    resolution: int
    fps: float
    latency_ms: float
    cpu_ms: float  # process CPU time per frame


class ReferenceCheck(_Wire):
    """One INT8 file run on the bundle's reference set with this device's kernels."""

    runtime: str
    resolution: int
    agreement: float  # top-1 agreement with the FP32 model's answers
    gate: float  # the top-1 agreement gate (bundles without a divergence gate)
    passed: bool
    error: str | None = None
    divergence: float | None = None  # mean KL divergence from FP32 on the reference frames
    max_divergence: float | None = None  # its gate, when the bundle has one (then it decides ``passed``)


class DeviceChoice(_Wire):
    """What serves on this device and why: the INT8 files checked, the candidates measured (none when nothing was
    left to choose, or when the decision was remembered from an earlier start, ``cached``), and a ``note`` when an
    INT8 file failed its check and the node serves something else."""

    runtime: str
    precision: str
    workers: int
    threads: int
    cached: bool = False
    note: str | None = None
    checks: list[ReferenceCheck] = Field(default_factory=list)
    trials: list[Trial] = Field(default_factory=list)


class NodeState(_Wire):
    """Retained: what the node is set to right now."""

    node: str
    ts: float
    mode: Mode
    resolution: int
    model: ModelRef
    publish: PublishPolicy
    publish_max_hz: float
    version: str  # edge-node software version
    device: DeviceChoice | None = None
    watch: WatchState | None = None  # the watch rules in force (docs/detections.md)


class Event(_Wire):
    """Result of a command, or a notable node event (``cmd`` names the cause)."""

    id: str | None = None
    cmd: str
    ok: bool
    error: str | None = None
    detail: dict[str, object] | None = None
    ts: float = Field(default_factory=lambda: round(time.time(), 3))

    @field_validator("id", "cmd", "error", mode="before")
    @classmethod
    def _printable(cls, value: object) -> object:
        """Texts can come from hostile payloads or exceptions: make them valid UTF-8, so publishing never fails."""
        if isinstance(value, str):
            return value.encode("utf-8", "replace").decode("utf-8")[:1000]
        return value


OtaPhase = Literal["idle", "downloading", "verifying", "activating", "active", "failed", "rolled_back"]


class OtaStatus(_Wire):
    """Retained on ``<prefix>/<node>/ota``."""

    node: str
    ts: float
    phase: OtaPhase
    version: str | None = None
    progress: float | None = None  # 0..100 while downloading
    error: str | None = None
    id: str | None = None


# --- commands -------------------------------------------------------------------------------------------

_ID = Annotated[str, Field(min_length=1, max_length=128)]
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Command(BaseModel):
    # Strict: a wrong type is refused, never coerced ("2" or true is not a number).
    model_config = ConfigDict(extra="forbid", strict=True)

    id: _ID | None = None


class SetMode(_Command):
    cmd: Literal["set_mode"]
    mode: Mode


class Ping(_Command):
    cmd: Literal["ping"]


class SetPublish(_Command):
    cmd: Literal["set_publish"]
    policy: PublishPolicy
    max_hz: float | None = Field(None, ge=0.01, le=1000, allow_inf_nan=False)


class UpdateModel(_Command):
    cmd: Literal["update_model"]
    url: Annotated[str, Field(min_length=8, max_length=2048)]
    sha256: str
    size: int | None = Field(None, gt=0)
    version: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")]

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _HEX64.match(value):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower()


class Rollback(_Command):
    cmd: Literal["rollback"]


class Snapshot(_Command):
    """Publish one JPEG of the latest frame to ``snapshot`` (only where EDGE_SNAPSHOT__ENABLED=true)."""

    cmd: Literal["snapshot"]


class SetWatch(_Command):
    """Replace the node's watch rules (docs/detections.md); an empty list stops watching."""

    cmd: Literal["set_watch"]
    rules: WatchRules


Command = Annotated[
    SetMode | Ping | SetPublish | UpdateModel | Rollback | Snapshot | SetWatch, Field(discriminator="cmd")
]
_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


def parse_command(payload: bytes, max_bytes: int = 16384) -> Command:
    """Validate a control payload; raise CommandError with a message fit for an error event."""
    if len(payload) > max_bytes:
        raise CommandError(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return _COMMAND.validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "json_invalid":
            raise CommandError(f"invalid JSON: {first['msg']}") from exc
        if first["type"] == "union_tag_invalid":
            raise CommandError(f"unknown command; expected one of {', '.join(_names())}") from exc
        if first["type"] == "union_tag_not_found":
            raise CommandError("missing 'cmd' field") from exc
        raise CommandError(f"{where}: {first['msg']}" if where else first["msg"]) from exc


def parse_mode_select(payload: bytes, max_bytes: int = 16384) -> SetMode:
    """Home Assistant's select payload (a bare mode name, nothing else) as the same ``set_mode`` the control topic
    takes; raise CommandError for anything else, so that a command sent there is refused, never run."""
    if len(payload) > max_bytes:
        raise CommandError(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    modes = {mode.value.encode(): mode for mode in Mode}
    if payload not in modes:
        raise CommandError(
            f"this topic takes only a mode name ({', '.join(Mode)}) from Home Assistant's select; "
            "send commands to the node's control topic"
        )
    return SetMode(cmd="set_mode", mode=modes[payload])


def _names() -> list[str]:
    return [get_args(m.model_fields["cmd"].annotation)[0] for m in get_args(get_args(Command)[0])]


def command_id(payload: bytes) -> tuple[str | None, str]:
    """Best-effort (id, cmd) of an invalid payload, so that its error event can be correlated.

    It parses with the same strict JSON parser as the commands: what that parser refuses (invalid UTF-8, lone
    surrogates, nesting past its limit) yields no id rather than an id that cannot be published.
    """
    try:
        data = pydantic_core.from_json(payload)
    except ValueError:
        return None, "invalid"
    if not isinstance(data, dict):
        return None, "invalid"
    raw_id, raw_cmd = data.get("id"), data.get("cmd")
    ident = raw_id[:128] if isinstance(raw_id, str) else None
    cmd = raw_cmd[:64] if isinstance(raw_cmd, str) else "invalid"
    return ident, cmd
