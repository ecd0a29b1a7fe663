"""Pipeline efficiency: the node's end-to-end FPS against bare ONNX Runtime on the same model file.

Measured in one run, interleaved (bare, node, bare, node, ...), so machine load affects both alike:
- bare: ``session.run`` in a loop on one preprocessed tensor, same file, same session options and threads;
- node: ``edge-node run`` as a real process (on-demand synthetic camera, never the bottleneck; 224, INT8,
  publish every frame) into a private mosquitto; FPS is what a subscriber (mosquitto_sub) receives per second.
It also reports the node's peak RSS (VmHWM).

    .venv/bin/python bench/bench_pipeline.py [--bundle DIR] [--rounds 3] [--seconds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_node.bundle import open_bundle  # noqa: E402
from edge_node.capture.synthetic import SyntheticSource  # noqa: E402
from edge_node.runtimes.onnx import session_options  # noqa: E402
from edge_node.vision.preprocess import Preprocessor  # noqa: E402
from tests.support.brokers import Mosquitto  # noqa: E402


def bare_fps(model: Path, tensor: np.ndarray, threads: int, seconds: float) -> float:
    sess = ort.InferenceSession(str(model), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(20):
        sess.run(None, {name: tensor})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {name: tensor})
        n += 1
    return n / (time.perf_counter() - t0)


def node_fps(
    bundle: Path, port: int, threads: int, seconds: float, workdir: Path, workers: str = "1"
) -> tuple[float, float, dict[str, Any]]:
    """Predictions per second as received by a subscriber (mosquitto_sub: a C client, so the measuring
    costs the 2-core machine as little as possible), over ``seconds`` after a warm-up."""
    received = workdir / "received.txt"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-t", "ghostpi/bench/predictions", "-F", "%U %p"],
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
        EDGE_MODEL__THREADS=str(threads),
        EDGE_MODEL__WORKERS=workers,
        EDGE_PUBLISH__POLICY="every",
        EDGE_STATE_DIR=str(workdir / "state"),
        PYTHONPATH=str(ROOT),
    )
    log = (workdir / "node.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "edge_node", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while received.stat().st_size == 0:  # warm-up: sessions built, first predictions flowing
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"node produced no predictions; see {workdir / 'node.log'}")
            time.sleep(0.1)
        time.sleep(2.0)
        t0 = time.time()
        time.sleep(seconds)
        t1 = time.time()
        hwm = _vmhwm_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        sub.terminate()
        sub.wait(5)
        log.close()
    lines = received.read_text().splitlines()
    n = sum(1 for line in lines if t0 <= float(line.split(" ", 1)[0]) < t1)
    return n / (t1 - t0), hwm, json.loads(lines[-1].split(" ", 1)[1])


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
    print(
        f"model {model.name} ({bundle.manifest.name} {bundle.manifest.version}), threads={args.threads}, "
        f"{args.rounds} rounds of {args.seconds:.0f}s each, interleaved"
    )
    bares, nodes, rss = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            for i in range(args.rounds):
                bares.append(bare_fps(model, tensor, args.threads, args.seconds))
                fps, hwm, sample = node_fps(
                    args.bundle, broker.port, args.threads, args.seconds, Path(tmp), args.workers
                )
                nodes.append(fps)
                rss.append(hwm)
                print(
                    f"round {i + 1}: bare ORT {bares[-1]:7.1f} fps | node end-to-end {fps:7.1f} fps "
                    f"| ratio {fps / bares[-1]:.3f} | node peak RSS {hwm:.0f} MB"
                )
        finally:
            broker.stop()
    bare, node = statistics.median(bares), statistics.median(nodes)
    print(f"\nmedian: bare ORT {bare:.1f} fps, node {node:.1f} fps, ratio {node / bare:.3f} (issue 11 bar: >= 1.1)")
    print(f"node peak RSS: max {max(rss):.0f} MB (bar: < 200 MB)")
    print(f"last prediction: {sample['label']} latency_ms={sample['latency_ms']} resolution={sample['resolution']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
