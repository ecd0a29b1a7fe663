"""``edge-node simulate --procs P``: one fleet spread over P simulator processes, for fleets one core cannot carry.

Each child is ``edge-node simulate`` with its share of the nodes (ids continue where the previous child's end,
so the fleet looks the same as from one process) and every other option as given (``--kill`` per process). The
parent relays the children's JSON lines with a ``proc`` field added, forwards SIGINT, SIGTERM and SIGUSR1 to
them, and exits with the worst exit status.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

__all__ = ["child_args", "run_procs", "shares"]


def shares(nodes: int, procs: int) -> list[tuple[int, int]]:
    """(first id, count) per process: as even as it gets, in id order."""
    out, first = [], 1
    for i in range(procs):
        count = nodes // procs + (i < nodes % procs)
        if count:
            out.append((first, count))
        first += count
    return out


def child_args(options: Sequence[str], first: int, count: int, total: int) -> list[str]:
    """The options every child shares, and this child's share of the fleet."""
    return [*options, "--nodes", str(count), "--first-id", str(first), "--total", str(total)]


def run_procs(options: Sequence[str], nodes: int, procs: int) -> int:
    children: list[subprocess.Popen[str]] = []

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # forwarding is in place before the first child starts: a SIGTERM while they start reaches those started
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, forward)
    for first, count in shares(nodes, procs):
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge_node", "simulate", *child_args(options, first, count, nodes)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    lock = threading.Lock()

    def relay(index: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("{") and line.rstrip().endswith("}"):
                line = f'{line.rstrip()[:-1]}, "proc": {index}}}\n'
            with lock:
                sys.stdout.write(line)
                sys.stdout.flush()

    threads = [threading.Thread(target=relay, args=(i, c), daemon=True) for i, c in enumerate(children)]
    for thread in threads:
        thread.start()
    codes = [child.wait() for child in children]
    for thread in threads:
        thread.join(5)
    return max(codes, key=abs)
