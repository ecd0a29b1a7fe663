"""200 simulated nodes at 10 Hz (~2000 msg/s) in the dashboard and a real browser: every card renders, the
server stays under half a core, and predictions reach the screen within a second (measured in the page).
A short window; bench/bench_dashboard.py runs the full measurement (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import measure_fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_two_hundred_nodes_render_within_a_second(mosquitto: Mosquitto, tmp_path: Path) -> None:
    figures = measure_fleet(mosquitto.port, tmp_path, nodes=200, rate=10, seconds=8)
    print(figures)
    assert figures["cards_online"] == 200
    # the server sends each node's newest prediction per batch (4 per second), not all 10
    assert figures["predictions_rendered"] > 200 * 4 * 8 * 0.5
    assert figures["latency_median_s"] < 1.0, figures
    # The tails are the machine's as much as the dashboard's: beside an emulated arm64 run (four qemu processes
    # and the other xdist worker on 2 cores) they reached p95 1.116 s end to end and 0.543 s in the server, with
    # medians of 0.224 s and 0.107 s. So the p95 bar of 1 s is measured by bench/bench_dashboard.py without
    # neighbours (docs/benchmarks.md), and this test holds the tails to what only a defect (a stuck or backlogged
    # push loop: seconds, growing) exceeds.
    assert figures["server_lag_p95_s"] < 1.5, figures
    assert figures["latency_p95_s"] < 3.0, figures
    assert figures["dashboard_cpu_percent"] < 50, figures
