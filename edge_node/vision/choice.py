"""What serves a bundle on this device, the figures behind it, and remembering it across restarts.

:mod:`edge_node.vision.selection` decides; this module holds the decision's values (a :class:`Choice` of a
:class:`Candidate`, with the :class:`Check` and :class:`Trial` behind it, as the node's state reports them)
and their file, ``<state_dir>/device-choice.json``: one entry per :func:`choice_key` (the bundle's exact
files, this CPU, the runtimes' versions and the settings), the newest 16 kept, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_node.bundle import Bundle
from edge_node.config import ModelConfig
from edge_node.runtimes import Runtime, versions

__all__ = ["Candidate", "Check", "Choice", "Trial", "choice_key", "recall", "remember"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Candidate:
    runtime: Runtime
    precision: str
    workers: int
    threads: int  # per worker

    def describe(self) -> str:
        return f"{self.runtime} {self.precision} {self.workers}x{self.threads}"


@dataclass(frozen=True, slots=True)
class Trial:
    candidate: Candidate
    resolution: int
    fps: float
    latency_ms: float
    cpu_ms: float

    def as_dict(self) -> dict[str, object]:
        figures = {"fps": round(self.fps, 1), "latency_ms": round(self.latency_ms, 2), "cpu_ms": round(self.cpu_ms, 2)}
        return {**asdict(self.candidate), "resolution": self.resolution, **figures}


@dataclass(frozen=True, slots=True)
class Check:
    """One INT8 file run on the bundle's reference set on this device."""

    runtime: str
    resolution: int
    agreement: float
    gate: float
    error: str | None = None  # the file did not even run
    divergence: float | None = None  # mean divergence from FP32 (bundles with a divergence gate)
    max_divergence: float | None = None  # its gate; None: the top-1 agreement gate applies

    @property
    def passed(self) -> bool:
        if self.error is not None:
            return False
        if self.max_divergence is not None and self.divergence is not None:
            return self.divergence <= self.max_divergence
        return self.agreement >= self.gate

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.runtime} int8 at {self.resolution}px failed to run on the reference set: {self.error}"
        verdict = "passes" if self.passed else "fails"
        if self.max_divergence is not None and self.divergence is not None:
            return (
                f"{self.runtime} int8 at {self.resolution}px {verdict} its reference check on this device: "
                f"mean divergence from FP32 {self.divergence:.4f} (gate {self.max_divergence:.4f}), "
                f"{self.agreement:.1%} top-1 agreement"
            )
        return (
            f"{self.runtime} int8 at {self.resolution}px {verdict} its reference check on this device: "
            f"{self.agreement:.1%} top-1 agreement with FP32 (gate {self.gate:.0%})"
        )


@dataclass
class Choice:
    """What serves, and the checks and measurements behind it (reported in the node's state)."""

    candidate: Candidate
    trials: list[Trial] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    measured: bool = False  # False: nothing was left to measure, or the remembered decision was used
    cached: bool = False

    @property
    def note(self) -> str | None:
        """Why the node serves something other than what it would prefer: an INT8 file failed its check."""
        failed = [c for c in self.checks if not c.passed]
        if not failed:
            return None
        worst = min(failed, key=lambda c: (c.error is None, c.agreement))
        c = self.candidate
        below = "" if c.precision == "fp32" or all(x.runtime != c.runtime for x in failed) else " (below its gate)"
        return f"{worst.describe()}; serving {c.runtime} {c.precision}{below}"

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self.candidate),
            "cached": self.cached,
            "trials": [t.as_dict() for t in self.trials],
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
        }


def choice_key(bundle: Bundle, cfg: ModelConfig, threads: int, *, cores: int) -> str:
    """What the decision depends on: the bundle's exact files, this CPU and these runtime versions, the settings."""
    cpu: list[str] = []
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = sorted({line for line in info.splitlines() if line.startswith(("model name", "Model", "flags"))})
    except OSError:
        pass
    parts = {
        "manifest": hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": cores,
        "runtimes": versions(),
        "settings": [cfg.runtime, cfg.precision, cfg.workers, threads, cfg.spin],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def recall(path: Path | None, key: str) -> Choice | None:
    """The choice remembered under ``key`` in ``path``; None when there is none or the file is unreadable."""
    if path is None:
        return None
    try:
        entry = json.loads(path.read_text())[key]
        checks = [Check(**{k: v for k, v in c.items() if k != "passed"}) for c in entry.get("checks", [])]
        trials = [Trial(**{**t, "candidate": Candidate(**t["candidate"])}) for t in entry.get("trials", [])]
        return Choice(Candidate(**entry["candidate"]), trials=trials, checks=checks, cached=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remember(path: Path | None, key: str, choice: Choice) -> None:
    """Keep ``choice`` under ``key`` (the newest 16 keys; a write that fails is logged, never raised)."""
    if path is None:
        return
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = {
        "candidate": asdict(choice.candidate),
        "trials": [asdict(t) for t in choice.trials],  # so the state still shows why after a restart
        "checks": [asdict(c) for c in choice.checks],
    }
    while len(data) > 16:
        data.pop(next(iter(data)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot remember the device choice in %s: %s", path, exc)
