"""Pipeline efficiency: the node's end-to-end FPS and its CPU per frame beyond inference, against bare ONNX Runtime.

Measured in one run, interleaved (bare, session, node, bare, session, node, ...), so machine load affects all alike:
- bare: ``session.run`` in a loop on one preprocessed tensor, same file, same session options and threads
  (single-session ONNX Runtime INT8: the yardstick of the ratio);
- session: the configuration the node serves (runtime, precision, workers x threads, read from its retained
  state), timed inference only as ``edge-node bench`` does (every worker's session at once) in this process:
  its process CPU time per frame is what inference alone costs;
- node: ``edge-node run`` as a real process (on-demand synthetic camera, never the bottleneck; 224, INT8,
  publish every frame) into a private mosquitto; FPS is what a subscriber (mosquitto_sub) receives per second.
  Its CPU per frame is the node process's CPU time (all threads, from /proc) over the frames received in the
  same window; minus the session's CPU per frame, that is what the node costs beyond inference. The broker's
  and the subscriber's CPU per frame are reported beside it (they run on the same cores), and the node's CPU per
  frame by thread (``py-spy dump`` names the Python threads, a dev tool; the unnamed ones are the runtime's pools),
  with the sum outside the inference threads: a floor of the cost beyond inference that needs no session timed
  apart, so the load of a shared machine moves it less.
It also reports the node's peak RSS (VmHWM). ``--compare DIR`` runs the node of another checkout (say the
commit before a change) in every round too, right after this one's, with the same broker, state and settings;
``--compared-spin on|off`` says how that checkout's ONNX Runtime sessions run (``on``: it predates
``EDGE_MODEL__SPIN``, which it is never given), so that its session is timed alone alike. ``--spin-ab`` runs
this node twice a round instead, with ``EDGE_MODEL__SPIN`` off (its default) and on, and times the session
alone the same way each time. Bare ORT keeps ONNX Runtime's own default: its pool threads spin.

    .venv/bin/python bench/bench_pipeline.py [--bundle DIR] [--rounds 3] [--seconds 15] [--threads 2] \
        [--workers 1] [--runtime auto] [--compare DIR [--compared-spin on|off] | --spin-ab]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_node.bundle import Bundle, open_bundle  # noqa: E402
from edge_node.capture.synthetic import SyntheticSource  # noqa: E402
from edge_node.runtimes.onnx import session_options  # noqa: E402
from edge_node.vision.model import Model  # noqa: E402
from edge_node.vision.preprocess import Preprocessor  # noqa: E402
from edge_node.vision.timing import time_variant  # noqa: E402
from tests.support.brokers import Mosquitto  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
# The venv's py-spy when the bench runs as .venv/bin/python without the venv on PATH.
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
FORMAT = ("-F", "%U %t %p")  # mosquitto_sub: receive time, topic, payload


@dataclass(frozen=True)
class NodeRun:
    fps: float
    cpu_ms: float  # node process CPU per received prediction
    others_ms: float  # broker + subscriber CPU per received prediction
    hwm_mb: float
    last: dict[str, Any]  # the last prediction
    serving: dict[str, Any]  # the retained state's device choice (runtime, precision, workers, threads)
    threads_ms: dict[str, float]  # node CPU per frame by thread (py-spy names them; unnamed = the runtime's pools)

    @property
    def outside_ms(self) -> float | None:
        """CPU per frame of every thread but the inference workers and the runtime's pools (None without py-spy):
        a floor of the cost beyond inference that needs no session timed apart (the workers' own preprocessing and
        post-processing and the pools' extra spinning are not in it; a checkout with a preprocess thread counts
        that thread here)."""
        if "inference workers" not in self.threads_ms:
            return None
        return sum(v for k, v in self.threads_ms.items() if k not in ("inference workers", "runtime pools"))


def bare_fps(model: Path, tensor: np.ndarray, threads: int, seconds: float) -> float:
    opts = session_options(threads, spin=True)  # ONNX Runtime as it ships
    sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(20):
        sess.run(None, {name: tensor})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {name: tensor})
        n += 1
    return n / (time.perf_counter() - t0)


def session_cpu_ms(
    bundle: Bundle, serving: dict[str, Any], frame: np.ndarray, seconds: float, *, spin: bool
) -> tuple[float, float]:
    """Inference only, in the configuration the node serves: (fps, process CPU ms per frame)."""
    model = Model(
        bundle,
        runtime=serving["runtime"],
        precision=serving["precision"],
        workers=serving["workers"],
        threads=serving["threads"],
        spin=spin,
    )
    timing = time_variant(model.build(224), frame, seconds=seconds, warmup=10)
    return timing.fps, timing.cpu_ms


def node_run(
    root: Path,
    bundle: Path,
    port: int,
    workdir: Path,
    broker_pid: int,
    *,
    threads: int,
    workers: str,
    seconds: float,
    runtime: str = "auto",
    spin: bool | None = None,
) -> NodeRun:
    """Predictions per second as received by a subscriber (mosquitto_sub: a C client, so the measuring
    costs the 2-core machine as little as possible), over ``seconds`` after a warm-up, and CPU per frame."""
    received = workdir / "received.txt"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-t", "ghostpi/bench/predictions", "-t", "ghostpi/bench/state", *FORMAT],
        stdout=received.open("wb"),
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(
        EDGE_NODE_ID="bench",
        EDGE_MQTT__HOST="127.0.0.1",
        EDGE_MQTT__PORT=str(port),
        EDGE_CAMERA__SOURCE="synthetic:on_demand",  # a camera that is never the bottleneck
        EDGE_MODE="high",
        EDGE_MODEL__BUNDLE=str(bundle),
        EDGE_MODEL__RUNTIME=runtime,
        EDGE_MODEL__THREADS=str(threads),
        EDGE_MODEL__WORKERS=workers,
        EDGE_PUBLISH__POLICY="every",
        EDGE_STATE_DIR=str(workdir / "state"),
        PYTHONPATH=str(root),
    )
    if spin is not None:  # None: a checkout that predates the setting (it spins, and would refuse the variable)
        env["EDGE_MODEL__SPIN"] = str(spin).lower()
    log = (workdir / "node.log").open("wb")
    # cwd=root: ``python -m`` puts the working directory first on sys.path, before PYTHONPATH.
    cmd = [sys.executable, "-m", "edge_node", "run"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    watched = (proc.pid, broker_pid, sub.pid)
    try:
        deadline = time.monotonic() + 120
        while b"/predictions " not in received.read_bytes()[-4096:]:  # warm-up: sessions built, predictions flow
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"node produced no predictions; see {workdir / 'node.log'}")
            time.sleep(0.1)
        time.sleep(2.0)
        names = _thread_names(proc.pid)
        cpu0, by0, t0 = [_cpu_s(pid) for pid in watched], _threads_cpu_s(proc.pid), time.time()
        time.sleep(seconds)
        cpu1, by1, t1 = [_cpu_s(pid) for pid in watched], _threads_cpu_s(proc.pid), time.time()
        hwm = _vmhwm_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        sub.terminate()
        sub.wait(5)
        log.close()
    predictions: list[str] = []
    serving: dict[str, Any] = {}
    for line in received.read_text().splitlines():
        stamp, topic, payload = line.split(" ", 2)
        if topic.endswith("/state"):
            serving = json.loads(payload).get("device") or {}
        elif t0 <= float(stamp) < t1:
            predictions.append(payload)
    n = len(predictions)
    node_cpu = cpu1[0] - cpu0[0]
    others = sum(cpu1[1:]) - sum(cpu0[1:])
    threads_ms: dict[str, float] = {}
    for tid, cpu in by1.items():
        name = names.get(tid, "runtime pools") if names else "all threads"
        name = "inference workers" if name.startswith("inference-") else name
        threads_ms[name] = threads_ms.get(name, 0.0) + 1000 * (cpu - by0.get(tid, 0.0)) / n
    fps = n / (t1 - t0)
    return NodeRun(fps, 1000 * node_cpu / n, 1000 * others / n, hwm, json.loads(predictions[-1]), serving, threads_ms)


def _thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS thread id, from ``py-spy dump`` (a dev tool); empty without it."""
    try:
        dump = subprocess.run([PY_SPY, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m[1]): m[2] for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump.stdout)}


def _threads_cpu_s(pid: int) -> dict[int, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            out[int(task.name)] = _cpu_s(pid, task=int(task.name))
    return out


def _cpu_s(pid: int, task: int | None = None) -> float:
    """User + system CPU seconds of process ``pid``, all its threads (``/proc/<pid>/stat``), or of one thread."""
    path = Path(f"/proc/{pid}/stat") if task is None else Path(f"/proc/{pid}/task/{task}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _vmhwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="default: the demo bundle (built if missing)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2, help="threads of bare ORT and of the node, in all")
    parser.add_argument("--workers", default="1", help="the node's EDGE_MODEL__WORKERS")
    parser.add_argument("--runtime", default="auto", help="the node's EDGE_MODEL__RUNTIME")
    ab = parser.add_mutually_exclusive_group()
    ab.add_argument(
        "--compare", type=Path, default=None, metavar="DIR", help="also run the node of this checkout, every round"
    )
    parser.add_argument(
        "--compared-spin", choices=("on", "off"), default="on", help="whether the compared checkout's sessions spin"
    )
    ab.add_argument("--spin-ab", action="store_true", help="this node with EDGE_MODEL__SPIN off and on, every round")
    args = parser.parse_args()
    if args.bundle is None:
        from edge_node.modelzoo.demo import ensure_demo_bundle

        args.bundle = ensure_demo_bundle()
    bundle = open_bundle(args.bundle)
    model = bundle.model_file(224, "int8")
    # Bare ORT runs on the very frames the node's synthetic camera delivers: INT8 speed depends on the content.
    camera = SyntheticSource(640, 480, 30.0, on_demand=True)
    camera.open()
    frame = camera.read()
    assert frame is not None
    tensor = Preprocessor(bundle.manifest.preprocess, 224)(frame).copy()
    # name -> (checkout, how its sessions spin). The compared checkout is never given EDGE_MODEL__SPIN (one from
    # before the setting would refuse it): its spin is only for its session timed alone.
    roots: dict[str, tuple[Path, bool]] = {"node": (ROOT, False)}
    if args.compare is not None:
        roots["compared"] = (args.compare.resolve(), args.compared_spin == "on")
    elif args.spin_ab:
        roots = {"spin-off": (ROOT, False), "spin-on": (ROOT, True)}
    print(
        f"model {model.name} ({bundle.manifest.name} {bundle.manifest.version}), threads={args.threads}, "
        f"{args.rounds} rounds of {args.seconds:.0f}s each, interleaved; "
        + ", ".join(f"{name} = {root} (spin {'on' if spin else 'off'})" for name, (root, spin) in roots.items())
    )
    bares: list[float] = []
    runs: dict[str, list[NodeRun]] = {name: [] for name in roots}
    beyond: dict[str, list[float]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        assert broker.proc is not None
        try:
            for i in range(args.rounds):
                bares.append(bare_fps(model, tensor, args.threads, args.seconds))
                print(f"round {i + 1}: bare ORT {bares[-1]:7.1f} fps")
                for name, (root, spin) in roots.items():
                    run = node_run(
                        root,
                        args.bundle,
                        broker.port,
                        Path(tmp),
                        broker.proc.pid,
                        threads=args.threads,
                        workers=args.workers,
                        seconds=args.seconds,
                        runtime=args.runtime,
                        spin=spin if root == ROOT else None,
                    )
                    s_fps, s_cpu = session_cpu_ms(bundle, run.serving, frame, min(args.seconds, 5.0), spin=spin)
                    runs[name].append(run)
                    beyond[name].append(run.cpu_ms - s_cpu)
                    d = run.serving
                    print(
                        f"  {name:8} end-to-end {run.fps:7.1f} fps | ratio {run.fps / bares[-1]:.3f} | CPU/frame: node "
                        f"{run.cpu_ms:.2f} ms, session alone {s_cpu:.2f} ms ({s_fps:.0f} fps), beyond inference "
                        f"{beyond[name][-1]:.2f} ms; broker+subscriber {run.others_ms:.2f} ms | peak RSS "
                        f"{run.hwm_mb:.0f} MB | {d.get('runtime')} {d.get('precision')} "
                        f"{d.get('workers')}x{d.get('threads')}"
                    )
                    by_thread = sorted(run.threads_ms.items(), key=lambda kv: -kv[1])
                    print("           node CPU/frame by thread: " + ", ".join(f"{k} {v:.3f} ms" for k, v in by_thread))
                    if run.outside_ms is not None:
                        print(f"           outside the inference threads: {run.outside_ms:.3f} ms/frame")
        finally:
            broker.stop()
    bare = statistics.median(bares)
    print(f"\nmedian bare ORT {bare:.1f} fps")
    for name, node_runs in runs.items():
        fps = statistics.median(r.fps for r in node_runs)
        ratios = [r.fps / b for r, b in zip(node_runs, bares, strict=True)]
        print(
            f"{name:8} median {fps:.1f} fps, ratio to bare ORT {statistics.median(ratios):.3f} (bar: >= 1.1), "
            f"CPU beyond inference {statistics.median(beyond[name]):.2f} ms/frame (bar: <= 0.5), "
            f"peak RSS max {max(r.hwm_mb for r in node_runs):.0f} MB (bar: < 200 MB)"
        )
        outside = [r.outside_ms for r in node_runs if r.outside_ms is not None]
        if outside:
            print(f"         outside the inference threads: median {statistics.median(outside):.2f} ms/frame")
        last = node_runs[-1].last
        print(
            f"         last prediction: {last['label']} latency_ms={last['latency_ms']} resolution={last['resolution']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
