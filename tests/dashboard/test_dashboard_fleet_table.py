"""10,000 nodes known to the dashboard, in Debian's headless Chromium: / opens the fleet table, which renders
one page of rows (not 10,000 cards), search and paging work, the dashboard stops following predictions on
its own, and its server stays under half a core while heartbeats arrive at the fleet's rate (1,000 a second).
bench/bench_dashboard_table.py measures the same for longer (docs/benchmarks.md)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess, chromium, page_until
from tests.support.fleet_feed import FleetFeed
from tests.support.fleet_procs import proc_cpu_seconds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NODES = 10_000
WAIT = 240.0  # s: generous, the machine is shared (a load average of hundreds was seen)
FIRST_ROW = "document.querySelector('#rows tr')?.dataset.node"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # no cap on messages queued per client: the dashboard subscribes to 20,000 retained messages at once
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf="allow_anonymous true\nmax_queued_messages 0\n").start()
    try:
        yield broker
    finally:
        broker.stop()


_until = partial(page_until, timeout=WAIT)


def _fleet_api(base: str, query: str = "") -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/api/fleet?{query}", timeout=30) as resp:
        data = json.load(resp)
    assert isinstance(data, dict)
    return data


def _rows(page: Any) -> list[str]:
    return [str(n) for n in page.evaluate("[...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.node)")]


def test_ten_thousand_nodes_table_search_paging_and_cpu(broker: Mosquitto, tmp_path: Path) -> None:
    feed = FleetFeed(broker.port, NODES)
    dash = None
    try:
        feed.seed()
        feed.start(period=10.0)  # the fleet's heartbeats from here on: 1,000 a second
        # stale after 2 minutes, not 30 s: on a loaded machine the first heartbeats may take that long to go round
        dash = DashboardProcess(
            broker.port,
            tmp_path,
            start_timeout=WAIT,
            EDGE_DASHBOARD__MAX_NODES=str(NODES),
            EDGE_DASHBOARD__STALE_AFTER="120",
        )
        deadline = time.monotonic() + WAIT
        while (known := _fleet_api(dash.base)["summary"]["total"]) < NODES:
            assert time.monotonic() < deadline, f"the dashboard knows {known} of {NODES} nodes:\n{dash.log()[-2000:]}"
            time.sleep(0.5)
        first = _fleet_api(dash.base)
        assert first["predictions"] is False  # unset EDGE_DASHBOARD__PREDICTIONS: a large fleet drops them
        assert first["summary"]["offline"] == NODES // feed.offline_every
        assert first["limits"]["node_messages_ignored"] == 0

        with chromium() as browser:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{dash.base}/#token={TOKEN}")
            assert page.url.split("#")[0].endswith("/fleet")  # a fleet this size opens on the table
            _until(page, f"() => fleetStats.matching === {NODES} && fleetStats.rows === 100")
            assert page.evaluate("document.querySelectorAll('#rows tr').length") == 100  # only what is on screen
            assert page.evaluate("document.querySelectorAll('.card').length") == 0
            assert _rows(page)[:2] == ["fleet-00000", "fleet-00001"]
            assert page.locator("#n-total").inner_text() == str(NODES)
            assert page.locator('tr[data-node="fleet-00000"] td.st').inner_text() == "offline"
            # retained online (stale if its heartbeats have not gone round yet on a loaded machine)
            assert page.locator('tr[data-node="fleet-00001"] td.st').inner_text() in ("online", "stale")

            page.click("#next")
            _until(page, "() => fleetStats.page === 1")
            assert _rows(page)[0] == "fleet-00100" and len(_rows(page)) == 100
            page.click("#last")
            _until(page, "() => fleetStats.page === 99")
            assert _rows(page)[-1] == "fleet-09999"
            assert "page 100 of 100" in page.locator("#pageinfo").inner_text()

            page.fill("#q", "FLEET-0123")
            _until(page, "() => fleetStats.matching === 10 && fleetStats.page === 0")  # 10 of 10,000: the search
            assert _rows(page) == [f"fleet-0123{i}" for i in range(10)]
            page.fill("#q", "")
            page.check("#problems")
            offline = NODES // feed.offline_every
            _until(page, f"() => fleetStats.matching === {offline} && {FIRST_ROW} === 'fleet-00000'")
            assert _rows(page) == [f"fleet-{i:05d}" for i in range(0, NODES, feed.offline_every)]
            page.uncheck("#problems")
            _until(page, f"() => fleetStats.matching === {NODES}")

            # the server's CPU while the fleet's heartbeats arrive and the table refreshes in the browser
            # after 5 s to settle: the window measures the steady fleet, not the retained backlog of start-up
            settle0, swall0 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            time.sleep(5.0)
            settling = round(100 * (proc_cpu_seconds(dash.proc.pid) - settle0) / (time.monotonic() - swall0), 1)
            fetched, sent = page.evaluate("fleetStats.fetched"), feed.sent
            cpu0, wall0 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            time.sleep(10.0)  # the measurement window
            cpu1, wall1 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            figures = {
                "dashboard_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
                "heartbeats_per_s": round((feed.sent - sent) / (wall1 - wall0)),
                "table_fetches": page.evaluate("fleetStats.fetched") - fetched,
                "settling_cpu_percent": settling,
            }
            print(figures)
            assert figures["table_fetches"] >= 3, figures  # the table kept refreshing through the window
            assert figures["heartbeats_per_s"] > 0, figures
            assert figures["dashboard_cpu_percent"] < 50, figures
            page.close()
            assert errors == [], f"JavaScript errors on the page: {errors}"
    finally:
        feed.close()
        if dash is not None:
            dash.close()
