"""What the dashboard's full picture costs at fleet scale, and what building it once per tick saves.

In-process, no broker: a Board with N nodes, each with a full chart (``--points``), a prediction, a
heartbeat and ``events_kept`` command results, as after a long run. It times ``Board.full`` plus the JSON
encoding and reports its size: before issue 16 every newly connected browser cost one of these on the
event loop; now it is built at most once per tick, shared by the browsers that connect in it, and encoded a
few cards at a time. It also measures the longest the event loop stood still while the picture was made,
encoded at once (as before) and in slices (as now). Run it on a quiet machine.

    PYTHONPATH=. .venv/bin/python -m bench.bench_dashboard_full --nodes 200 1000 --points 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial

from edge_node.config import DashboardConfig
from edge_node.dashboard.board import Board
from edge_node.dashboard.server import _full_frame  # the server's own slicing, measured as it runs
from edge_node.fleet.simnode import SimNode
from edge_node.wire import Event


def _board(nodes: int, points: int) -> Board:
    cfg = DashboardConfig(history_seconds=points * 2.0, history_interval=2.0)
    board = Board("gp", cfg)
    sims = [SimNode(f"n{i:05d}") for i in range(nodes)]
    events = [(f"gp/{s.node_id}/events", Event(id=f"e{j}", cmd="ping", ok=True).to_bytes(), 0.0) for s in sims
              for j in range(cfg.events_kept)]  # fmt: skip
    for step in range(points):
        now = step * 2.0
        latest = [(f"gp/{s.node_id}/predictions", s.prediction(), now) for s in sims]
        if step == 0:
            latest += [(f"gp/{s.node_id}/heartbeat", s.heartbeat(), now) for s in sims]
        board.update(latest, events if step == 0 else [], now, 1e9 + now)
    return board


def _full(board: Board) -> bytes:
    picture = board.full(1e6, 1e9 + 1e6)
    return json.dumps(picture, separators=(",", ":"), allow_nan=False).encode()


async def _stall(work: Callable[[], Awaitable[object]]) -> float:
    """The longest gap, in seconds, between two turns of the event loop while ``work`` runs."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    await work()
    done.set()
    await task
    return max(gaps)


async def _at_once(board: Board) -> bytes:
    return _full(board)


async def _sliced(board: Board) -> bytes:
    return await _full_frame(board.full(1e6, 1e9 + 1e6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for nodes in args.nodes:
        board = _board(nodes, args.points)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            frame = _full(board)
            times.append(time.perf_counter() - t0)
        one = min(times)
        at_once = asyncio.run(_stall(partial(_at_once, board)))
        sliced = asyncio.run(_stall(partial(_sliced, board)))
        print(
            f"{nodes} nodes x {args.points} points: full picture {len(frame) / 1e6:.1f} MB, built and encoded in "
            f"{one * 1000:.0f} ms (best of {args.repeat}, median {sorted(times)[len(times) // 2] * 1000:.0f} ms); "
            f"longest event-loop stall: {at_once * 1000:.0f} ms encoded at once, {sliced * 1000:.0f} ms in slices "
            f"(x{at_once / sliced:.0f})"
        )


if __name__ == "__main__":
    main()
