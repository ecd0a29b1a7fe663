"""The dashboard's fleet table at 10,000 nodes: server CPU while heartbeats arrive and a browser pages.

A private mosquitto, ``tests/support/fleet_feed.FleetFeed`` (each node's retained status and state, then one
heartbeat per node every ``--period`` seconds, from one client: the messages a fleet sends the dashboard once
it no longer follows predictions), ``edge-node dashboard`` and Debian's headless Chromium on ``/fleet``. Once
every node is known it measures for ``--seconds``: the dashboard process's CPU time over wall time (100 % = one
core), its RSS, the heartbeats per second the feed reached, and the table pages the browser fetched. In the
same run it also times one ``/api/fleet`` search and one page from the test's side.

    PYTHONPATH=. .venv/bin/python -m bench.bench_dashboard_table --nodes 10000 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess, chromium
from tests.support.fleet_feed import FleetFeed
from tests.support.fleet_procs import proc_cpu_seconds


def _get(url: str) -> tuple[dict[str, object], float]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = json.load(resp)
    return data, time.perf_counter() - started


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(nodes: int, seconds: float, period: float, work: Path) -> dict[str, object]:
    broker = Mosquitto(work / "mosquitto", extra_conf="allow_anonymous true\nmax_queued_messages 0\n").start()
    feed = FleetFeed(broker.port, nodes)
    dash = None
    try:
        started = time.monotonic()
        feed.seed()
        feed.start(period)
        dash = DashboardProcess(
            broker.port,
            work,
            start_timeout=120,
            EDGE_DASHBOARD__MAX_NODES=str(nodes),
            EDGE_DASHBOARD__STALE_AFTER=str(period * 6),
        )
        while _get(f"{dash.base}/api/fleet")[0]["summary"]["total"] < nodes:  # type: ignore[index]
            time.sleep(0.5)
        known_s = time.monotonic() - started
        with chromium() as browser:
            page = browser.new_page()
            page.goto(f"{dash.base}/#token={TOKEN}")
            while not page.evaluate(f"() => window.fleetStats && fleetStats.matching === {nodes}"):
                time.sleep(0.2)
            fetched, sent = page.evaluate("fleetStats.fetched"), feed.sent
            load0 = os.getloadavg()
            cpu0, wall0 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, wall1 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            window = wall1 - wall0
            search, search_s = _get(f"{dash.base}/api/fleet?q=fleet-0123")
            _, page_s = _get(f"{dash.base}/api/fleet?page=50&size=500")
            return {
                "nodes": nodes,
                "seed_and_known_s": round(known_s, 1),
                "window_s": round(window, 1),
                "dashboard_cpu_percent": round(100 * (cpu1 - cpu0) / window, 1),
                "dashboard_rss_mb": round(_rss_mb(dash.proc.pid), 1),
                "heartbeats_per_s": round((feed.sent - sent) / window),
                "table_fetches_per_s": round((page.evaluate("fleetStats.fetched") - fetched) / window, 2),
                "search_matching": search["matching"],
                "search_ms": round(1000 * search_s, 1),
                "page_500_rows_ms": round(1000 * page_s, 1),
                "rows_in_dom": page.evaluate("document.querySelectorAll('#rows tr').length"),
                "load_average_before": load0,
                "load_average_after": os.getloadavg(),
            }
    finally:
        feed.close()
        if dash is not None:
            dash.close()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between two heartbeats of a node")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.nodes, args.seconds, args.period, Path(tmp))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
