"""The per-frame state machine of the watch rules (pure: frames and times are passed in).

A rule's score on a frame is the summed confidence of the top-k classes it watches (a cat photo splits its
probability between "tabby", "tiger cat" and "Egyptian cat"). A frame whose score reaches ``min_confidence`` is a
hit (a watched class must be among the top-k, even at ``min_confidence`` 0). ``min_frames`` consecutive hits
(or hits spanning ``min_seconds``) start a detection, which lasts until no hit came for ``gap_s`` seconds;
after its end the rule waits ``cooldown_s`` before it may start again.

Nothing here looks at the mode or the resolution, so a mode switch cannot end or double a detection; a model
swap only matters when the new labels lack every watched class (the rule pauses, and an open detection ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge_node.watch.groups import expand
from edge_node.wire.watch import Detection, EndReason, WatchRule

__all__ = ["SNAPSHOT_WINDOW_S", "Scored", "Tracker"]

SNAPSHOT_WINDOW_S = 1.0  # a detection's snapshot is its best frame within this long from its first frame

_NONE: tuple[Detection, ...] = ()
_EPS = 1e-6  # seconds: a gap of exactly gap_s counts, whatever the float rounding of the times


class Scored(Protocol):
    """One of a frame's top-k classes (``vision.model.Score``)."""

    @property
    def label(self) -> str: ...

    @property
    def confidence(self) -> float: ...


@dataclass(slots=True)
class _Run:
    """Consecutive hits of one rule: pending until they start a detection, then its figures."""

    started: float
    last_hit: float
    frames: int
    total: float
    peak: float
    best_ts: float
    best_label: str
    active: bool = False


@dataclass(slots=True)
class _Rule:
    rule: WatchRule
    names: frozenset[str]
    min_frames: int
    min_seconds: float
    paused: str | None = None
    run: _Run | None = None
    quiet_until: float = float("-inf")  # the cooldown after an end
    starts: int = 0


@dataclass
class Tracker:
    """The watch rules of one node. ``frame`` is the hot path: a few set look-ups per rule and no allocation
    unless a detection starts or ends (< 0.1 ms per frame at 10 rules: ``bench/bench_watch.py``)."""

    node_id: str
    rules: Sequence[WatchRule] = ()
    labels: Sequence[str] | None = None
    snapshots: bool = False  # collect ``firsts`` (the node keeps frames for detection snapshots)
    _rules: list[_Rule] = field(init=False, default_factory=list)
    # (rule, run's first frame time, score, label) of each frame that became the best of its run's first second, since
    # the caller last cleared it: the node keeps that frame for the detection's snapshot.
    firsts: list[tuple[str, float, float, str]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.set_rules(self.rules, now=0.0)

    # --- configuration --------------------------------------------------------------------------------------

    def set_rules(self, rules: Sequence[WatchRule], *, now: float) -> list[Detection]:
        """Replace the rules. A rule that is the same as before keeps its state (an open detection goes on);
        open detections of rules removed or changed end (reason ``rules``)."""
        old = {r.rule.name: r for r in self._rules}
        ends: list[Detection] = []
        fresh: list[_Rule] = []
        for rule in rules:
            kept = old.pop(rule.name, None)
            if kept is not None and kept.rule == rule:
                fresh.append(kept)
                continue
            if kept is not None:
                ends += self._end(kept, now, "rules")
            fresh.append(self._compile(rule))
        for gone in old.values():
            ends += self._end(gone, now, "rules")
        self.rules = tuple(rules)
        self._rules = fresh
        return ends

    def set_labels(self, labels: Sequence[str], *, now: float) -> tuple[list[Detection], dict[str, str | None]]:
        """The serving model's labels changed (a model swap): rules without any of their classes pause (an open
        detection ends, reason ``paused``), paused rules whose classes are back resume. Returns the ends and
        the rules whose pause changed (name → why it paused, or None: resumed)."""
        self.labels = tuple(labels)
        have = frozenset(labels)
        ends: list[Detection] = []
        changed: dict[str, str | None] = {}
        for r in self._rules:
            r.names = expand(r.rule.classes, self.labels)
            why = None if r.names & have else f"the serving model has none of the classes {sorted(r.rule.classes)}"
            if why != r.paused:
                changed[r.rule.name] = why
                if why is not None:
                    ends += self._end(r, now, "paused")
                r.paused = why
        return ends, changed

    def _compile(self, rule: WatchRule) -> _Rule:
        r = _Rule(rule, expand(rule.classes, self.labels), rule.min_frames or 1, rule.min_seconds or 0.0)
        if self.labels is not None and not r.names & frozenset(self.labels):
            r.paused = f"the serving model has none of the classes {sorted(rule.classes)}"
        return r

    # --- frames ---------------------------------------------------------------------------------------------

    def frame(self, ts: float, top_k: Iterable[Scored]) -> Sequence[Detection]:
        """One classified frame at ``ts`` (seconds); the starts and ends it causes, usually none."""
        out: list[Detection] | None = None
        top = top_k if isinstance(top_k, tuple | list) else tuple(top_k)
        for r in self._rules:
            if r.paused is not None:
                continue
            names = r.names
            score = 0.0
            best = ""
            best_p = -1.0
            for s in top:
                if s.label in names:
                    p = s.confidence
                    score += p
                    if p > best_p:
                        best_p, best = p, s.label
            hit = best_p >= 0.0 and score >= r.rule.min_confidence  # a watched class is in the top-k, surely enough
            said = self._step(r, ts, score, best) if hit else self._miss(r, ts)
            if said is not None:
                if out is None:
                    out = []
                out.append(said)
        return out if out is not None else _NONE

    def _step(self, r: _Rule, ts: float, score: float, label: str) -> Detection | None:
        run = r.run
        if run is None:
            if ts < r.quiet_until:
                return None
            run = r.run = _Run(ts, ts, 1, score, score, ts, label)
            if self.snapshots:
                self.firsts.append((r.rule.name, ts, score, label))
        else:
            run.last_hit = ts
            run.frames += 1
            run.total += score
            if score > run.peak:
                run.peak, run.best_ts, run.best_label = score, ts, label
                if self.snapshots and ts - run.started <= SNAPSHOT_WINDOW_S:
                    self.firsts.append((r.rule.name, run.started, score, label))
        if run.active or run.frames < r.min_frames or ts - run.started < r.min_seconds:
            return None
        run.active = True
        r.starts += 1
        return self._record(r, run, "start", ts)

    def _miss(self, r: _Rule, ts: float) -> Detection | None:
        run = r.run
        if run is None:
            return None
        if not run.active:
            r.run = None  # the hits before it were not consecutive enough
            return None
        if ts - run.last_hit + _EPS < r.rule.gap_s:
            return None
        return self._close(r, run, ts, "gap")

    def tick(self, now: float) -> list[Detection]:
        """Ends detections whose gap has passed without any frame (a stalled camera, a stopped pipeline)."""
        ends = []
        for r in self._rules:
            run = r.run
            if run is None or now - run.last_hit + _EPS < r.rule.gap_s:
                continue
            if run.active:
                ends.append(self._close(r, run, now, "gap"))
            else:
                r.run = None
        return ends

    def close(self, now: float, reason: EndReason = "shutdown") -> list[Detection]:
        """Ends every open detection (the node stops)."""
        return [d for r in self._rules for d in self._end(r, now, reason)]

    # --- records --------------------------------------------------------------------------------------------

    def _end(self, r: _Rule, now: float, reason: EndReason) -> list[Detection]:
        run = r.run
        if run is None:
            return []
        if not run.active:
            r.run = None
            return []
        return [self._close(r, run, now, reason)]

    def _close(self, r: _Rule, run: _Run, now: float, reason: EndReason) -> Detection:
        r.run = None
        r.quiet_until = run.last_hit + r.rule.cooldown_s
        end = self._record(r, run, "end", now)
        end.ended = round(run.last_hit, 3)
        end.duration_s = round(run.last_hit - run.started, 3)
        end.mean_confidence = round(run.total / run.frames, 4)
        end.reason = reason
        return end

    def _record(self, r: _Rule, run: _Run, event: str, now: float) -> Detection:
        return Detection(
            node=self.node_id,
            rule=r.rule.name,
            event="start" if event == "start" else "end",
            id=detection_id(r.rule.name, run.started),
            ts=round(now, 3),
            started=round(run.started, 3),
            label=run.best_label,
            frames=run.frames,
            peak_confidence=round(run.peak, 4),
            best_ts=round(run.best_ts, 3),
        )

    # --- what the node reports ------------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Detections started per rule since the node started (the heartbeat's ``detections``)."""
        return {r.rule.name: r.starts for r in self._rules}

    def current(self, rule: str) -> tuple[float, bool] | None:
        """The first frame time of ``rule``'s run and whether it is a detection yet; None without a run."""
        for r in self._rules:
            if r.rule.name == rule and r.run is not None:
                return r.run.started, r.run.active
        return None

    @property
    def paused(self) -> dict[str, str]:
        return {r.rule.name: r.paused for r in self._rules if r.paused is not None}

    def open(self) -> list[Detection]:
        """A record of every open detection as it stands (what the node persists against a crash)."""
        out = []
        for r in self._rules:
            run = r.run
            if run is not None and run.active:
                rec = self._record(r, run, "start", run.last_hit)
                rec.mean_confidence = round(run.total / run.frames, 4)
                out.append(rec)
        return out


def detection_id(rule: str, started: float) -> str:
    """The id a detection's start and end share: its rule and its first frame's time in milliseconds."""
    return f"{rule}-{round(started * 1000)}"
