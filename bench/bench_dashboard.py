"""The web dashboard under ``edge-node simulate --nodes N --rate HZ``: server CPU and message-to-screen latency.

A private mosquitto, the simulator, ``edge-node dashboard`` and Debian's headless Chromium (Playwright). After
every card is on screen it measures for ``--seconds``: the dashboard process's CPU time over wall time (100 % =
one core) and, in the page, the time from each prediction's ``ts`` (the simulator's clock, same machine) to
the animation frame after the one that rendered it. Also: the server-side part of that delay (prediction ts to
the batch leaving the server) and the page's JavaScript time per frame.

    PYTHONPATH=. .venv/bin/python -m bench.bench_dashboard --nodes 200 --rate 10 --seconds 60
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import measure_fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            figures = measure_fleet(broker.port, Path(tmp), nodes=args.nodes, rate=args.rate, seconds=args.seconds)
        finally:
            broker.stop()
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
