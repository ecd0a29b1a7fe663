"""A card's recorder ranges in Debian's headless Chromium (issue 20): with EDGE_DASHBOARD__HISTORY, pressing
"24 h" redraws the card's chart from the recorder's database (a SQLite file filled through the recorder's own
store) and "labels by hour" shows the node's counts per hour and label; back to live, the recorder is gone."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from edge_node.fleet.simnode import SimNode
from edge_node.record.rows import to_row
from edge_node.record.sqlite import SqliteStore
from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import DashboardProcess, chromium, page_until
from tests.support.history_fill import HOURLY_24H, LABELS_24H, fill
from tests.support.nodeproc import Collector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CARD = '.card[data-node="door"]'
SPAN = f"document.querySelector('{CARD} .chart-span').textContent"
# pixels of the fps line's green (#3fb970) on the card's canvas
GREEN = f"""() => {{
  const c = document.querySelector('{CARD} canvas.chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 100 && d[i] < 90 && d[i + 1] > 150 && d[i + 2] < 140) n++;
  return n;
}}"""


_until = partial(page_until, timeout=20.0)


def test_24_hours_redraw_the_chart_from_the_recorder_and_show_labels_by_hour(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    now = time.time()
    hour = math.floor(now / 3600) * 3600
    db = tmp_path / "history.db"
    store = SqliteStore(db)
    fill(store, now)
    store.close()
    dash = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__HISTORY="true", EDGE_RECORD__PATH=str(db))
    feed = Collector(mosquitto.port, ("ghostpi/none",))
    try:
        feed.publish("ghostpi/door/heartbeat", SimNode("door").heartbeat())  # the card, live
        with chromium() as browser:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{dash.base}/")
            _until(page, f"() => !!document.querySelector('{CARD}')")
            ranges = page.locator(f"{CARD} .ranges button[data-range]")
            _until(page, f"() => !document.querySelector('{CARD} button[data-range=\"7d\"]').hidden")
            assert ranges.all_inner_texts() == ["10 min (live)", "1 h", "24 h", "7 d"]
            assert page.locator(f"{CARD} .hourly-open").is_hidden()  # live: nothing from the recorder yet
            assert "recorder" not in page.evaluate(SPAN) and page.evaluate(GREEN) == 0
            assert page.evaluate("ghostpiStats.history.fetches") == 0  # only on demand

            page.click(f'{CARD} button[data-range="24h"]')
            _until(page, f"() => {SPAN}.startsWith('last 24 h · recorder')")
            assert page.evaluate(SPAN) == "last 24 h · recorder · max 20.0 fps, 60.0 ms"  # the peak hour, not yard's
            assert page.evaluate(GREEN) > 100  # the line is drawn across the canvas
            assert page.locator(f'{CARD} button[data-range="24h"]').get_attribute("class") == "current"
            assert page.evaluate("ghostpiStats.history.fetches") == 1

            page.click(f"{CARD} .hourly-open")
            _until(page, "() => document.querySelector('#node-history').open")
            assert page.locator("#nh-title").inner_text() == "door · labels by hour · last 24 h"
            head = page.locator("#nh-table thead th").all_inner_texts()
            assert head == ["hour", *LABELS_24H, "other", "all"]
            for ago, (counts, other, total) in HOURLY_24H.items():
                cells = page.locator(f'#nh-table tbody tr[data-ts="{hour - ago * 3600:.0f}"] td').all_inner_texts()
                assert cells[1:] == [str(n) for n in (*counts, other, total)], (ago, cells)
            stamps = page.evaluate("[...document.querySelectorAll('#nh-table tbody tr')].map((r) => +r.dataset.ts)")
            assert stamps == sorted(stamps, reverse=True) and len(stamps) in (4, 5)  # newest first
            page.click("#nh-close")
            _until(page, "() => !document.querySelector('#node-history').open")

            page.click(f'{CARD} button[data-range="1h"]')
            _until(page, f"() => {SPAN} === 'last 1 h · recorder · max 10.0 fps, 40.0 ms'")
            page.click(f'{CARD} button[data-range="live"]')
            _until(page, f"() => !{SPAN}.includes('recorder')")
            assert page.locator(f"{CARD} .hourly-open").is_hidden()
            assert page.evaluate("ghostpiStats.history.fetches") == 2
            assert errors == [], errors
    finally:
        feed.close()
        dash.close()


def _write(db: Path, *rows: tuple[str, Mapping[str, float | str]]) -> None:
    """Rows of node "door" written as ``edge-node record`` writes them, while the dashboard reads the file."""
    store = SqliteStore(db)
    try:
        decoded = [to_row("door", leaf, json.dumps(data).encode(), float(data["ts"])) for leaf, data in rows]
        assert None not in decoded
        assert store.write([r for r in decoded if r is not None]) == len(rows)
    finally:
        store.close()


# every text the card's legend shows, in order, from the moment this runs
WATCH_SPAN = f"""() => {{
  const span = document.querySelector('{CARD} .chart-span');
  window.spanTexts = [span.textContent];
  new MutationObserver(() => window.spanTexts.push(span.textContent))
    .observe(span, {{ childList: true, characterData: true, subtree: true }});
}}"""
# Headless Chromium's pages are always "visible" (another tab in front, a minimized window: still visible), so
# the page is told what a browser tells a background tab: document.visibilityState and a visibilitychange.
HIDE = """(hidden) => {
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => hidden ? 'hidden' : 'visible' });
  window.visibilityAt = performance.now();
  document.dispatchEvent(new Event('visibilitychange'));
}"""
# the hourly table's "all" column, summed
HOURLY_TOTAL = (
    "() => [...document.querySelectorAll('#nh-table tbody tr')].reduce((n, r) => n + +r.lastChild.textContent, 0)"
)


@contextlib.contextmanager
def _one_hour_shown(
    mosquitto: Mosquitto, tmp_path: Path, *rows: tuple[str, Mapping[str, float | str]]
) -> Iterator[tuple[Any, DashboardProcess, Path, float]]:
    """A recorder's SQLite file filled for door (and ``rows``), a dashboard reading it that refreshes a shown
    range every second, and a page showing door's 1 h: (page, dashboard, database, when it was filled)."""
    db = tmp_path / "history.db"
    store = SqliteStore(db)
    filled = time.time()  # door's heartbeats: filled - 1, - 301, - 601, ...: each in its own 1-min bucket
    fill(store, filled)
    store.close()
    if rows:
        _write(db, *rows)
    dash = DashboardProcess(
        mosquitto.port, tmp_path, EDGE_DASHBOARD__HISTORY="true", EDGE_RECORD__PATH=str(db),
        EDGE_DASHBOARD__HISTORY_REFRESH="1",
    )  # fmt: skip
    feed = Collector(mosquitto.port, ("ghostpi/none",))
    try:
        feed.publish("ghostpi/door/heartbeat", SimNode("door").heartbeat())
        with chromium() as browser:
            page = browser.new_page()
            page.goto(f"{dash.base}/")
            _until(page, f"() => !!document.querySelector('{CARD}')")
            _until(page, f"() => !document.querySelector('{CARD} button[data-range=\"1h\"]').hidden")
            assert page.evaluate("() => ghostpiStats.history.fetches") == 0
            page.click(f'{CARD} button[data-range="1h"]')
            yield page, dash, db, filled
    finally:
        feed.close()
        dash.close()


def test_a_shown_range_refreshes_itself_while_the_page_is_visible(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """1 h shown, refreshed every second (EDGE_DASHBOARD__HISTORY_REFRESH=1): heartbeats and predictions the
    recorder writes afterwards reach the chart and the open hourly table without a button, the old chart stays
    while a refresh is on its way; a hidden page asks nothing, and asks again once shown."""
    fetches = "() => ghostpiStats.history.fetches"
    with _one_hour_shown(mosquitto, tmp_path) as (page, _, db, filled):
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        _until(page, f"() => {SPAN} === 'last 1 h · recorder · max 10.0 fps, 40.0 ms'")
        page.evaluate(WATCH_SPAN)
        page.click(f"{CARD} .hourly-open")
        _until(page, "() => document.querySelector('#node-history').open")
        _until(page, "() => document.querySelectorAll('#nh-table tbody tr').length > 0")
        before = page.evaluate(HOURLY_TOTAL)
        asked = page.evaluate(fetches)

        now = time.time()
        cats: list[tuple[str, Mapping[str, float | str]]] = [
            ("predictions", {"ts": now - 1 + i / 10, "seq": 1000 + i, "label": "cat"}) for i in range(3)
        ]
        # a heartbeat in a bucket of its own, 2.5 min from door's others, so its peak is the chart's
        _write(db, ("heartbeat", {"ts": filled - 150, "fps": 30.0, "inference_ms_avg": 70.0}), *cats)
        _until(page, f"() => {SPAN} === 'last 1 h · recorder · max 30.0 fps, 70.0 ms'")  # nothing pressed
        assert page.evaluate(fetches) > asked
        assert page.evaluate("() => ghostpiStats.history.refreshes") >= 1
        _until(page, f"() => ({HOURLY_TOTAL})() === {before + 3}")  # the open table with it
        texts = page.evaluate("() => window.spanTexts")
        assert all(t.startswith("last 1 h · recorder · max ") for t in texts), texts  # never cleared or "asking"
        page.click("#nh-close")

        page.evaluate(HIDE, True)  # a background tab
        hidden_at = page.evaluate(fetches)
        _write(db, ("heartbeat", {"ts": filled - 450, "fps": 50.0, "inference_ms_avg": 80.0}))
        _until(page, "() => performance.now() - window.visibilityAt > 4000")  # four refresh periods, hidden
        assert page.evaluate(fetches) == hidden_at
        assert page.evaluate(SPAN) == "last 1 h · recorder · max 30.0 fps, 70.0 ms"

        page.evaluate(HIDE, False)  # shown again: overdue, so it asks (a second later it may have asked again)
        _until(page, f"() => {SPAN} === 'last 1 h · recorder · max 50.0 fps, 80.0 ms'")
        assert page.evaluate(fetches) > hidden_at

        page.click(f'{CARD} button[data-range="live"]')  # live: no more refreshes
        _until(page, f"() => !{SPAN}.includes('recorder')")
        back = page.evaluate(fetches)
        page.evaluate(HIDE, False)
        _until(page, "() => performance.now() - window.visibilityAt > 3000")
        assert page.evaluate(fetches) == back
        assert errors == [], errors


def test_a_failed_refresh_keeps_the_chart_says_so_and_tries_again(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The dashboard server gone while 1 h is shown (refreshed every second): the chart stays drawn, its legend
    says the refresh failed, and the page keeps trying."""
    # door's heartbeats every 30 s for 10 min: a line on the 1 h chart (1-min buckets), fps below latency
    beats = [("heartbeat", {"ts": time.time() - 30 * k, "fps": 5.0, "inference_ms_avg": 40.0}) for k in range(1, 20)]
    legend = "last 1 h · recorder · max 10.0 fps, 40.0 ms"
    with _one_hour_shown(mosquitto, tmp_path, *beats) as (page, dash, _, _):
        _until(page, f"() => {SPAN} === '{legend}'")
        _until(page, "() => ghostpiStats.history.refreshes >= 1")  # refreshing
        drawn = page.evaluate(GREEN)
        assert drawn > 100

        dash.close()
        _until(page, f"() => {SPAN} === '{legend} · refresh failed: dashboard server unreachable'")
        _until(page, "() => ghostpiStats.history.refreshFailures >= 3")  # and again, a second apart
        assert page.evaluate(GREEN) == drawn  # the old chart, as it was
        assert page.evaluate(SPAN) == f"{legend} · refresh failed: dashboard server unreachable"


def test_a_card_scrolled_off_screen_asks_nothing_until_it_is_back(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Only cards on screen refresh their range (a fleet page of 1 h charts would otherwise ask the recorder for
    every card): scrolled away, door asks nothing; scrolled back, its overdue range is asked for again."""
    fetches = "() => ghostpiStats.history.fetches"
    with _one_hour_shown(mosquitto, tmp_path) as (page, _, db, filled):
        _until(page, f"() => {SPAN} === 'last 1 h · recorder · max 10.0 fps, 40.0 ms'")
        _until(page, "() => ghostpiStats.history.refreshes >= 1")  # refreshing while on screen
        # a page long enough to scroll the card away, as a fleet's cards below it would make it
        page.evaluate(
            "() => { const s = document.createElement('div'); s.id = 'spacer'; s.style.height = '6000px';"
            " document.body.append(s); window.scrollTo(0, document.body.scrollHeight); }"
        )
        _until(page, f"() => document.querySelector('{CARD}').getBoundingClientRect().bottom < 0")
        page.evaluate("() => { window.awayAt = performance.now(); }")
        away = page.evaluate(fetches)
        _write(db, ("heartbeat", {"ts": filled - 150, "fps": 30.0, "inference_ms_avg": 70.0}))
        _until(page, "() => performance.now() - window.awayAt > 4000")  # four refresh periods off screen
        assert page.evaluate(fetches) == away
        assert page.evaluate(SPAN) == "last 1 h · recorder · max 10.0 fps, 40.0 ms"

        page.evaluate("() => window.scrollTo(0, 0)")  # back: overdue, so it asks
        _until(page, f"() => {SPAN} === 'last 1 h · recorder · max 30.0 fps, 70.0 ms'")
        assert page.evaluate(fetches) > away
