"""The seed's loop, as a baseline: PyTorch eager FP32, numpy preprocessing, one frame at a time.

This is how the project started (and how most camera-classification demos run): read a frame, resize and
normalise it with numpy, run the FP32 PyTorch model, softmax, top-5, next frame. Nothing overlaps. Every node
figure in docs/benchmarks.md can be read as "x the seed's loop" on the same machine. With ``--node BUNDLE`` it
also runs the node end to end on that bundle (bench/bench_pipeline.py's measurement: on-demand synthetic
camera, every prediction published and counted by a subscriber), interleaved with the seed loop, and prints
the ratio.

    PYTHONPATH=. .venv/bin/python bench/seed_loop.py [--arch ghostnetv2_100] [--seconds 15] [--rounds 2]
        [--node BUNDLE_DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import node_fps  # noqa: E402
from tests.support.brokers import Mosquitto  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def seed_fps(arch: str, resolution: int, seconds: float) -> float:
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False).eval()
    frames = [np.random.default_rng(i).integers(0, 256, (480, 640, 3), dtype=np.uint8) for i in range(4)]

    def classify(frame: np.ndarray) -> tuple[int, float]:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        side = min(rgb.shape[:2])
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        crop = cv2.resize(rgb[top : top + side, left : left + side], (resolution, resolution))
        x = ((crop.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x))), dim=1)[0]
        conf, idx = probs.topk(5)
        return int(idx[0]), float(conf[0])

    for frame in frames:
        classify(frame)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classify(frames[n % len(frames)])
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ghostnetv2_100")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--node", type=Path, help="also run the node on this bundle, interleaved, and compare")
    parser.add_argument("--threads", default="auto", help="the node's EDGE_MODEL__THREADS")
    parser.add_argument("--workers", default="auto", help="the node's EDGE_MODEL__WORKERS")
    args = parser.parse_args()
    import torch

    print(f"seed loop: {args.arch} FP32, PyTorch {torch.__version__} eager ({torch.get_num_threads()} threads), "
          f"numpy preprocessing, {args.resolution}px, one frame at a time")  # fmt: skip
    seeds, nodes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start() if args.node else None
        try:
            for i in range(args.rounds):
                seeds.append(seed_fps(args.arch, args.resolution, args.seconds))
                line = f"round {i + 1}: seed loop {seeds[-1]:6.1f} fps"
                if broker is not None:
                    fps, hwm, _ = node_fps(
                        args.node,
                        broker.port,
                        args.threads,
                        args.seconds,
                        Path(tmp),
                        args.workers,
                    )
                    nodes.append(fps)
                    line += f" | node {fps:6.1f} fps ({fps / seeds[-1]:.1f}x) | node peak RSS {hwm:.0f} MB"
                print(line, flush=True)
        finally:
            if broker is not None:
                broker.stop()
    seed = statistics.median(seeds)
    print(f"\nmedian seed loop: {seed:.1f} fps")
    if nodes:
        node = statistics.median(nodes)
        print(f"median node: {node:.1f} fps = {node / seed:.1f}x the seed loop (bar for GhostNetV2 at 224: >= 8x)")


if __name__ == "__main__":
    main()
