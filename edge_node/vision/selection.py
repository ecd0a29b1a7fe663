"""Which runtime, precision and workers x threads serve a bundle, decided on the device itself.

INT8 kernels differ between CPUs, and nobody can know in advance what is fastest on a given board, so the
node decides here, for every setting left ``auto``:

1. **Accuracy.** Each INT8 file the settings allow is run on the bundle's reference set (real frames with the
   FP32 model's answers, ``bundle.reference``) through the node's own preprocessing and this CPU's kernels. A
   runtime whose INT8 files fall below the bundle's gate at any resolution is not served; the node falls back
   to another runtime or to FP32, and says why (the choice's ``note``: events, state, heartbeat). Bundles
   without a reference set are trusted on their build metrics.
2. **Speed.** The candidates that passed are timed, every runtime and precision with every way to share the
   threads among workers (each worker running its own session, all at once); the fastest wins.

The decision is remembered per device, bundle and software versions (``<state_dir>/device-choice.json``, kept
by :mod:`edge_node.vision.choice`, which also holds the decision's value types), so a restart does not measure
again; a new bundle or a changed setting does. The node measures in a child process
(:mod:`edge_node.vision.isolated`); ``edge-node bench`` calls :func:`choose` directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge_node import memory
from edge_node.bundle import Bundle
from edge_node.bundle.reference import ReferenceSet, check_session, load_reference
from edge_node.config import ModelConfig
from edge_node.errors import AccuracyError, EdgeError, InferenceError
from edge_node.runtimes import RUNTIMES, Runtime, info, installed
from edge_node.vision.choice import Candidate, Check, Choice, Trial, choice_key, recall, remember
from edge_node.vision.model import Model
from edge_node.vision.timing import TEXTURED, time_variant

__all__ = [
    "Candidate",
    "Check",
    "Choice",
    "Trial",
    "candidate_pairs",
    "check_accuracy",
    "choose",
    "decide",
    "describe",
    "measure",
    "settled",
    "threads_and_splits",
    "usable_cores",
    "worker_splits",
]

log = logging.getLogger(__name__)

TIE = 0.03  # candidates within 3 % of the fastest count as equal: then fewer workers (less memory) win


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_splits(threads: int, workers: int | None) -> list[tuple[int, int]]:
    """(workers, threads per worker) to try: ``workers`` if given, else every way to share ``threads`` evenly."""
    if workers is not None:
        return [(workers, max(1, threads // workers))]
    return [(w, threads // w) for w in range(1, threads + 1) if threads % w == 0]


def threads_and_splits(cfg: ModelConfig) -> tuple[int, list[tuple[int, int]]]:
    """(threads in all, the (workers, threads per worker) splits to consider)."""
    threads = usable_cores() if cfg.threads == "auto" else cfg.threads
    workers = None if cfg.workers == "auto" else cfg.workers
    return threads, worker_splits(threads, workers)


def candidate_pairs(bundle: Bundle, cfg: ModelConfig) -> list[tuple[Runtime, str]]:
    """(runtime, precision) pairs the settings allow for ``bundle`` on this node."""
    return [(r, p) for r in _runtimes(bundle, cfg) for p in _precisions(bundle, cfg, r)]


def _runtimes(bundle: Bundle, cfg: ModelConfig) -> list[Runtime]:
    offered = bundle.manifest.runtimes()
    if cfg.runtime != "auto":
        if cfg.runtime not in offered:
            raise InferenceError(
                f"EDGE_MODEL__RUNTIME={cfg.runtime}, but bundle {bundle.manifest.name} {bundle.manifest.version} "
                f"has files only for {', '.join(offered)}"
            )
        if not installed(cfg.runtime):
            hint = info(cfg.runtime).install
            raise InferenceError(f"EDGE_MODEL__RUNTIME={cfg.runtime}, but it is not installed: {hint}")
        return [cfg.runtime]
    have = [r for r in offered if installed(r)]
    if not have:
        hint = "; ".join(info(r).install for r in offered)
        raise InferenceError(
            f"bundle {bundle.manifest.name} has files for {', '.join(offered)}, none installed: {hint}"
        )
    return sorted(have, key=RUNTIMES.index)


def _precisions(bundle: Bundle, cfg: ModelConfig, runtime: Runtime) -> list[str]:
    have = [p for p in ("int8", "fp32") if bundle.manifest.resolutions(p, runtime)]
    if cfg.precision == "auto":
        return have
    if cfg.precision in have:
        return [cfg.precision]
    log.warning("bundle %s has no %s %s files; using %s", bundle.manifest.name, runtime, cfg.precision, have[0])
    return have[:1]


def check_accuracy(bundle: Bundle, runtime: Runtime, reference: ReferenceSet, threads: int) -> list[Check]:
    """Run ``runtime``'s INT8 file at every resolution on the reference set, with this CPU's kernels."""
    model = Model(bundle, runtime=runtime, precision="int8", workers=1, threads=threads)
    checks = []
    for resolution in model.resolutions:
        if resolution not in reference.top5:
            continue
        try:
            variant = model.build(resolution)
            file = bundle.manifest.variant(resolution, "int8", runtime).file
            result = check_session(reference, resolution, variant.sessions[0], variant.preprocessor, file=file)
            checks.append(
                Check(
                    runtime,
                    resolution,
                    result.agreement,
                    reference.min_agreement,
                    divergence=result.divergence,
                    max_divergence=result.max_divergence,
                )
            )
        except EdgeError as exc:
            checks.append(Check(runtime, resolution, 0.0, reference.min_agreement, error=str(exc)))
        finally:
            variant = None  # type: ignore[assignment]
            memory.trim()
    for check in checks:
        (log.info if check.passed else log.warning)("%s", check.describe())
    return checks


def choose(
    bundle: Bundle,
    cfg: ModelConfig,
    *,
    resolution: int,
    frame: np.ndarray | None = None,
    cache: Path | None = None,
    seconds: float = 1.0,
    strict: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Choice:
    """Decide what serves ``bundle`` here (see the module docstring); raises InferenceError when nothing can.

    When every candidate fails its accuracy check: with ``strict`` (an update) that is an error; otherwise (the
    bundle the node starts on) the best-agreeing one serves, and the choice's ``note`` says it is below its gate.
    """
    known = settled(bundle, cfg, cache=cache, strict=strict)
    if known is not None:
        return known
    threads, splits = threads_and_splits(cfg)
    pairs = candidate_pairs(bundle, cfg)
    reference = load_reference(bundle) if any(p == "int8" for _, p in pairs) else None
    key = choice_key(bundle, cfg, threads, cores=usable_cores())
    checks: list[Check] = []
    if reference is not None:
        for runtime in sorted({r for r, p in pairs if p == "int8"}, key=RUNTIMES.index):
            checks += check_accuracy(bundle, runtime, reference, threads)
    failed = {c.runtime for c in checks if not c.passed}
    allowed = [(r, p) for r, p in pairs if not (p == "int8" and r in failed)]
    if not allowed:
        what = "; ".join(c.describe() for c in checks if not c.passed)
        if strict:
            name = f"{bundle.manifest.name} {bundle.manifest.version}"
            raise AccuracyError(
                f"no file of bundle {name} is accurate enough on this device, and it has no FP32 files: {what}"
            )
        closest = max(
            (r for r, p in pairs if p == "int8"), key=lambda r: min(c.agreement for c in checks if c.runtime == r)
        )
        allowed = [(closest, "int8")]
        log.error(
            "no file of bundle %s passes its accuracy check here; serving the closest: %s", bundle.manifest.name, what
        )
    frame = frame if frame is not None else TEXTURED
    trials: list[Trial] = []

    def trial(candidate: Candidate) -> Trial | None:
        result = measure(bundle, candidate, resolution, frame, seconds, spin=cfg.spin)
        if result is not None:
            trials.append(result)
            if progress is not None:
                progress(describe(result))
        return result

    if len(allowed) == 1 and len(splits) == 1:
        best_candidate = Candidate(*allowed[0], *splits[0])
    else:
        # Every runtime and precision with every way to share the threads, one runtime after the other (a
        # runtime's libraries load with its first session: measuring each runtime's candidates together keeps
        # the memory peak of this first start down).
        for pair in allowed:
            for workers_, threads_ in splits:
                trial(Candidate(*pair, workers_, threads_))
        best = decide(trials)
        if best is None:
            raise InferenceError(f"no runtime and precision of bundle {bundle.manifest.name} could run here")
        best_candidate = best.candidate
    choice = Choice(best_candidate, trials, checks, measured=bool(trials or checks))
    remember(cache, key, choice)
    log.info("chosen on this device: %s%s", best_candidate.describe(), f" ({choice.note})" if choice.note else "")
    return choice


def settled(bundle: Bundle, cfg: ModelConfig, *, cache: Path | None = None, strict: bool = False) -> Choice | None:
    """The choice when nothing needs measuring: a single candidate without INT8 checks, or the decision
    remembered for this device, bundle and settings; None when :func:`choose` has to check and time."""
    threads, splits = threads_and_splits(cfg)
    pairs = candidate_pairs(bundle, cfg)
    if len(pairs) == 1 and len(splits) == 1 and (pairs[0][1] != "int8" or bundle.manifest.reference is None):
        return Choice(Candidate(*pairs[0], *splits[0]))
    remembered = recall(cache, choice_key(bundle, cfg, threads, cores=usable_cores()))
    if remembered is not None and (not strict or remembered.note is None or remembered.candidate.precision == "fp32"):
        log.info("using the device choice made before: %s", remembered.candidate.describe())
        return remembered
    return None


def decide(trials: Sequence[Trial]) -> Trial | None:
    """The fastest candidate; within 3 % of it, the one with fewer workers (less memory). Pure: the node and
    ``edge-node bench`` decide alike."""
    return _fastest(trials)


def describe(t: Trial) -> str:
    return (
        f"{t.candidate.describe()} at {t.resolution}px: {t.fps:.1f} fps, {t.latency_ms:.2f} ms, {t.cpu_ms:.2f} ms CPU"
    )


def measure(
    bundle: Bundle, candidate: Candidate, resolution: int, frame: np.ndarray, seconds: float, *, spin: bool = False
) -> Trial | None:
    """Build ``candidate``'s sessions (as the node will: ``spin``), check them and time them; None (logged) when
    it cannot run here."""
    c = candidate
    model = Model(bundle, runtime=c.runtime, precision=c.precision, workers=c.workers, threads=c.threads, spin=spin)
    r = model.nearest(resolution)
    try:
        variant = model.build(r)
        variant.check(frame)
        timing = time_variant(variant, frame, seconds=seconds)
    except EdgeError as exc:
        log.warning("%s cannot serve here: %s", candidate.describe(), exc)
        return None
    finally:
        variant = None  # type: ignore[assignment]
        memory.trim()
    return Trial(candidate, r, timing.fps, timing.latency_ms, timing.cpu_ms)


def _fastest(trials: Sequence[Trial]) -> Trial | None:
    if not trials:
        return None
    top = max(t.fps for t in trials)
    near = [t for t in trials if t.fps >= top * (1 - TIE)]
    return min(near, key=lambda t: (t.candidate.workers, -t.fps))
