"""The README's dashboard screenshot: six simulated nodes, one switched to performance, one snapshot taken.

PYTHONPATH=. .venv/bin/python -m tests.support.dashboard_screenshot docs/dashboard.png
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess, chromium
from tests.support.fleet_procs import Simulator


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        sim = Simulator(broker.port, Path(tmp), "--nodes", "6", "--rate", "5", "--heartbeat", "2", "--seed", "3")
        dash = None
        try:
            sim.wait_event("online", timeout=30)
            dash = DashboardProcess(broker.port, Path(tmp), EDGE_DASHBOARD__HISTORY_INTERVAL="0.5",
                                    EDGE_DASHBOARD__HISTORY_SECONDS="60")  # fmt: skip
            with chromium() as browser:
                page = browser.new_page()
                page.set_viewport_size({"width": 1400, "height": 860})
                page.goto(f"{dash.base}/#token={TOKEN}")
                page.wait_for_selector('[data-node="sim-006"] .badge.online', timeout=30_000)
                page.click('[data-node="sim-003"] .actions button[data-mode="performance"]')
                page.click('[data-node="sim-002"] .actions button.snapshot')
                page.wait_for_selector('[data-node="sim-002"] .snap-img:not([hidden])', timeout=30_000)
                time.sleep(20)  # let the charts fill
                page.screenshot(path=str(out))
        finally:
            if dash is not None:
                dash.close()
            sim.close()
            broker.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
