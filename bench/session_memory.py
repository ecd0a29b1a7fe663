"""Where a node's memory goes when it builds and drops sessions (mode switches, OTA swaps).

Builds the demo model's 160 and 224 px variants alternately, 60 times, keeping one, and prints RSS every 10
builds, in three ways:
  thread  each build on a new thread, as the node once did: every new thread may get a new glibc malloc arena
  same    every build on one long-lived thread, without malloc_trim
  node    what the node does now: one builder thread, M_ARENA_MAX=2, a fixed 1 MiB mmap threshold and
          malloc_trim once the old variant is gone
Each way runs in a fresh process so that they do not share a heap.

    PYTHONPATH=. .venv/bin/python bench/session_memory.py [--bundle DIR] [--builds 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from edge_node import memory
from edge_node.bundle import open_bundle
from edge_node.node import rss_mb
from edge_node.vision.model import Model, Variant

FRAME = np.full((480, 640, 3), 100, np.uint8)


def run(way: str, bundle: Path, builds: int) -> None:
    if way == "node":
        memory.limit_arenas(2)
        memory.fix_mmap_threshold()
    model = Model(open_bundle(bundle), threads=2)
    kept: list[Variant] = [model.build(224)]
    kept[0].check(FRAME)
    marks = [f"{rss_mb():.0f}"]
    for i in range(builds):
        resolution = 160 if i % 2 == 0 else 224

        def build(r: int = resolution) -> None:
            variant = model.build(r)
            variant.check(FRAME)
            kept[0] = variant  # the previous one is dropped here

        if way == "thread":
            t = threading.Thread(target=build)
            t.start()
            t.join()
        else:
            build()
        if way == "node":
            memory.trim()
        if (i + 1) % 10 == 0:
            marks.append(f"{rss_mb():.0f}")
    print(f"{way:>6}: RSS MB at start and every 10 builds: {' '.join(marks)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--builds", type=int, default=60)
    parser.add_argument("--way", choices=["thread", "same", "node"])
    args = parser.parse_args()
    if args.bundle is None:
        from edge_node.modelzoo.demo import ensure_demo_bundle

        args.bundle = ensure_demo_bundle()
    if args.way:
        run(args.way, args.bundle, args.builds)
        return
    for way in ("thread", "same", "node"):
        cmd = [sys.executable, __file__, "--way", way, "--bundle", str(args.bundle), "--builds", str(args.builds)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
