"""Watch rules and detections on the wire (docs/detections.md, docs/mqtt-api.md).

A rule says what to watch for; the node turns its per-frame results into one ``start`` and one ``end`` per
detection on ``<prefix>/<node>/detections`` (QoS 1), instead of a prediction per frame.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = ["MAX_RULES", "Detection", "EndReason", "WatchRule", "WatchRules", "WatchState"]

MAX_RULES = 32

_NAME = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
_CLASS = Annotated[str, Field(min_length=1, max_length=128)]

# Why a detection ended: no qualifying frame for ``gap_s`` ("gap"), its rule was paused by a model without the
# watched classes, replaced or removed ("rules"), the node stopped ("shutdown"), or the node found it still open
# after a restart it did not see coming, e.g. kill -9 or a power cut ("restart").
EndReason = Literal["gap", "paused", "rules", "shutdown", "restart"]


class WatchRule(BaseModel):
    """One thing to watch for: classes (the bundle's labels or named groups such as ``cat``), how sure the model
    must be, for how long before it counts, how long a gap ends it, and a cooldown before the next one."""

    # Strict like the commands (it arrives in ``set_watch``): "0.3" is not a number.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: _NAME
    classes: Annotated[list[_CLASS], Field(min_length=1, max_length=256)]
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    min_frames: int | None = Field(None, ge=1, le=100_000)
    min_seconds: float | None = Field(None, ge=0.0, le=86_400, allow_inf_nan=False)
    gap_s: float = Field(1.0, gt=0.0, le=3600, allow_inf_nan=False)
    cooldown_s: float = Field(0.0, ge=0.0, le=86_400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_start(self) -> Self:
        """With neither ``min_frames`` nor ``min_seconds``, one frame starts a detection."""
        if self.min_frames is None and self.min_seconds is None:
            object.__setattr__(self, "min_frames", 1)
        return self


def _unique(rules: list[WatchRule]) -> list[WatchRule]:
    names = [r.name for r in rules]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"rule names must be unique; give these distinct names: {', '.join(dupes)}")
    return rules


# A node's rules: at most MAX_RULES, names unique (a detection names its rule).
WatchRules = Annotated[list[WatchRule], Field(max_length=MAX_RULES), AfterValidator(_unique)]


class WatchState(BaseModel):
    """The rules in force, in the retained state; ``paused`` names rules the serving model cannot see, and why."""

    model_config = ConfigDict(extra="forbid")

    rules: WatchRules = Field(default_factory=list)
    paused: dict[str, str] = Field(default_factory=dict)


class Detection(BaseModel):
    """A detection's ``start`` (when its rule begins to hold) or ``end`` (with its figures). Both carry the same
    ``id``; ``started`` is the first qualifying frame's time, ``ended`` the last one's (seconds since the epoch)."""

    model_config = ConfigDict(extra="forbid")

    node: str
    rule: str
    event: Literal["start", "end"]
    id: str
    ts: float = Field(default_factory=lambda: round(time.time(), 3))  # when the node said it
    started: float
    label: str  # the best frame's label (the start: the best so far)
    frames: int  # qualifying frames so far
    peak_confidence: float
    best_ts: float  # the best frame's time
    ended: float | None = None
    duration_s: float | None = None
    mean_confidence: float | None = None
    reason: EndReason | None = None
    snapshot: bool | None = None  # a JPEG of the best frame followed on ``detections/snapshot``

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()
