"""``edge-node bench``: measure a bundle on this board and print (and save as JSON) what serves best.

Every runtime x precision x resolution x workers/threads split the bundle and this node allow is timed the way
the node runs it (every worker its own session, all at once; inference only), and the table shows latency,
throughput and CPU time per frame, and how each INT8 file does on the bundle's reference set with this CPU's
kernels. It ends with the configuration ``EDGE_MODEL__*=auto`` would choose here: the same decision the node
makes at start-up (``vision.selection``), a failing INT8 file excluded. No torch needed: run it on the Pi.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

from edge_node.errors import ConfigError
from edge_node.runtimes.registry import REGISTRY, versions

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure a model bundle on this device: runtimes, precisions, resolutions, workers x threads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "bundle", nargs="?", type=Path, help="bundle dir or .tar.gz (default: EDGE_MODEL__BUNDLE or the demo)"
    )
    p.add_argument("--seconds", type=float, default=2.0, metavar="S", help="timing per configuration (default 2)")
    p.add_argument("--resolutions", help="e.g. 224,160 (default: all the bundle has)")
    p.add_argument("--threads", type=int, help="threads in all (default: EDGE_MODEL__THREADS, auto = the cores)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="where to save the JSON (default bench.json)")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edge_node.bundle import open_bundle
    from edge_node.bundle.reference import load_reference
    from edge_node.config import load_settings
    from edge_node.vision.selection import (
        Candidate,
        Check,
        Trial,
        candidate_pairs,
        check_accuracy,
        decide,
        describe,
        measure,
        threads_and_splits,
        usable_cores,
    )
    from edge_node.vision.timing import TEXTURED

    settings = load_settings()
    cfg = settings.model.model_copy(update={"workers": "auto", "precision": "auto", "runtime": "auto"})
    if args.threads is not None:
        cfg = cfg.model_copy(update={"threads": args.threads})
    bundle = open_bundle(_bundle_path(args.bundle, settings.model.bundle), unpack_dir=Path.cwd())
    threads, splits = threads_and_splits(cfg)
    pairs = candidate_pairs(bundle, cfg)
    wanted = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    console = Console(stderr=True, highlight=False)
    console.print(
        f"[bold]{bundle.manifest.name} {bundle.manifest.version}[/] on {platform.machine()}, {usable_cores()} cores, "
        f"{threads} threads; {len(pairs)} runtime/precision pair(s) x {len(splits)} split(s); {args.seconds:g} s each"
    )
    reference = load_reference(bundle)
    failed: set[str] = set()
    checks: list[Check] = []
    if reference is not None:  # the node's on-device accuracy check: a failing INT8 file never serves
        for runtime in sorted({r for r, p in pairs if p == "int8"}):
            for check in check_accuracy(bundle, runtime, reference, threads):
                checks.append(check)
                console.print(f"  {check.describe()}")
                if not check.passed:
                    failed.add(check.runtime)
    trials: list[Trial] = []
    for runtime, precision in pairs:
        resolutions = bundle.manifest.resolutions(precision, runtime)
        for resolution in [r for r in resolutions if wanted is None or r in wanted]:
            for workers, per_worker in splits:
                candidate = Candidate(runtime, precision, workers, per_worker)
                trial = measure(bundle, candidate, resolution, TEXTURED, args.seconds, spin=cfg.spin)
                if trial is None:
                    console.print(f"  {candidate.describe()} at {resolution}px: [red]cannot run here[/] (see the log)")
                    continue
                trials.append(trial)
                console.print(f"  {describe(trial)}")
    if not trials:
        console.print("[red]nothing could run[/]")
        return 1
    top = max(t.resolution for t in trials)
    servable = [t for t in trials if not (t.candidate.precision == "int8" and t.candidate.runtime in failed)]
    chosen = decide([t for t in servable if t.resolution == top])
    table = Table(title=f"{bundle.manifest.name} {bundle.manifest.version}: inference only, every worker at once")
    agreement = {(k.runtime, k.resolution): k for k in checks}
    for name in ("runtime", "precision", "px", "workers x threads", "fps", "ms", "CPU ms/frame", "ref check", ""):
        table.add_column(name, justify="left" if name in ("runtime", "precision", "") else "right")
    for t in trials:
        c = t.candidate
        mark = "<- auto" if chosen is not None and c == chosen.candidate and t.resolution == top else ""
        k = agreement.get((c.runtime, t.resolution)) if c.precision == "int8" else None
        ref = "-" if k is None else f"{k.agreement:.0%}" + ("" if k.passed else " FAIL")
        table.add_row(
            c.runtime, c.precision, str(t.resolution), f"{c.workers} x {c.threads}",
            f"{t.fps:.1f}", f"{t.latency_ms:.2f}", f"{t.cpu_ms:.2f}", ref, mark,
        )  # fmt: skip
    out = Console(highlight=False, width=max(100, Console().width))  # piped output stays readable
    out.print(table)
    report = {
        "bundle": {"name": bundle.manifest.name, "version": bundle.manifest.version, "arch": bundle.manifest.arch},
        "device": _device(threads),
        "seconds_per_trial": args.seconds,
        "trials": [t.as_dict() for t in trials],
        "checks": [{**asdict(k), "passed": k.passed} for k in checks],
        "auto": None if chosen is None else {**chosen.as_dict()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if chosen is not None:
        c = chosen.candidate
        out.print(
            f"auto would serve with [bold]{c.runtime} {c.precision}, {c.workers} worker(s) x {c.threads} thread(s)[/]: "
            f"{chosen.fps:.1f} fps at {chosen.resolution}px. Saved to {args.out}"
        )
    return 0


def _bundle_path(given: Path | None, configured: Path | None) -> Path:
    if given is not None:
        return given
    if configured is not None:
        return configured
    from edge_node.modelzoo.demo import demo_bundle_path

    demo = demo_bundle_path()
    if not (demo / "manifest.json").is_file():
        raise ConfigError(
            "no bundle to measure: pass one (edge-node bench /path/to/bundle) or set EDGE_MODEL__BUNDLE; the demo "
            "bundle the package ships is missing (reinstall, or rebuild it: edge-node model demo --rebuild)"
        )
    return demo


def _device(threads: int) -> dict[str, object]:
    info: dict[str, object] = {"machine": platform.machine(), "threads": threads, "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and key.strip() not in info:
            info[key.strip()] = value.strip()
        if key.strip() in ("flags", "Features") and "flags" not in info:
            wanted = {"avx2", "avx512_vnni", "avx_vnni", "asimddp", "neon", "asimd", "i8mm"}
            info["flags"] = sorted(wanted & set(value.split()))
    for runtime, version in versions().items():
        info[REGISTRY[runtime].package] = version
    return info
