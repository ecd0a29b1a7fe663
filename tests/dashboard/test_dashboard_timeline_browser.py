"""The detections timeline in Debian's headless Chromium (issue 21's bar: it renders with 1,000 detections):
1,000 detections of four nodes and four rules published to a real mosquitto as nodes publish them, the page
lists them all, a rule filter narrows the list to that rule's count, a card's button to that node's too,
thumbnails show with the token, and a new detection appears without a reload."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from edge_node.fleet.simnode import SimNode
from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess, chromium, http_request, page_until
from tests.support.detection_feed import end, jpeg, start
from tests.support.nodeproc import Collector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NODES = ("cam-a", "cam-b", "cam-c", "cam-d")
RULES = ("cat", "dog", "bird", "person")
T0 = time.time() - 3600  # an hour of detections, the newest a few seconds old
ROWS = "document.querySelectorAll('#det-list li').length"


_until = partial(page_until, timeout=20.0)


def _until_kept(dash: DashboardProcess, broker: Mosquitto, kept: int) -> None:
    """The dashboard holds ``kept`` detections (before any browser: a shortfall here is the broker's or the
    server's, not the page's)."""
    deadline = time.monotonic() + 20
    while (data := json.loads(http_request(f"{dash.base}/api/detections?limit=1")[2]))["kept"] != kept:
        if time.monotonic() > deadline:
            raise AssertionError(f"{data}\n{broker.log_text()[-2000:]}\n{dash.log()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that queues the whole burst for a dashboard slowed by a busy machine: the test sends 2,000
    messages in about a second, which no real fleet's detections come near, and mosquitto's default
    (max_queued_messages 1000) would drop what the dashboard's MQTT thread has not read yet."""
    mosquitto = Mosquitto(tmp_path / "mosquitto", extra_conf="allow_anonymous true\nmax_queued_messages 10000\n")
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


def test_a_thousand_detections_render_filter_by_rule_and_a_new_one_appears_live(
    broker: Mosquitto, tmp_path: Path
) -> None:
    dash = DashboardProcess(broker.port, tmp_path)
    feed = Collector(broker.port, ("ghostpi/none",))
    rules: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    try:
        began = time.monotonic()
        for i in range(1000):
            node, rule = NODES[i % 4], RULES[(i // 4 + i // 16) % 4]  # every node sees every rule
            rules[rule] += 1
            pairs[node, rule] += 1
            first = start(node, rule, T0 + i * 3.5, snapshot=i >= 990)
            feed.publish(f"ghostpi/{node}/detections", first.to_bytes())
            if i >= 990:  # the newest ten have a snapshot, as with EDGE_SNAPSHOT__ENABLED=true
                feed.publish(f"ghostpi/{node}/detections/snapshot/{first.id}", jpeg(i % 256))
            if i % 50 != 7:  # a few are still open
                feed.publish(f"ghostpi/{node}/detections", end(first, 2.0).to_bytes())
        feed.publish("ghostpi/cam-b/heartbeat", SimNode("cam-b").heartbeat())  # a card to open its timeline from
        published = time.monotonic() - began
        _until_kept(dash, broker, 1000)

        with chromium() as browser:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            shown = time.monotonic()
            page.goto(f"{dash.base}/")  # viewing is open on loopback; snapshots need the token
            _until(page, f"() => {ROWS} === 1000")
            rendered = time.monotonic() - shown
            count = page.locator("#det-count").inner_text()
            assert count == "1000 matching · 20 open · 1000 kept", count
            first_row = page.locator("#det-list li").first
            assert first_row.get_attribute("data-id") == f"person-{round((T0 + 999 * 3.5) * 1000)}"  # newest first
            assert page.locator("#det-list li.open").count() == 20
            assert "as far back as this dashboard has seen" in page.locator("#det-reach").inner_text()
            # the newest rows are on screen: without the token their thumbnails say so; with it, they come
            _until(page, "() => document.querySelectorAll('#det-list .lock').length > 0")
            assert page.locator("#det-list img.thumb").count() == 0
            page.fill("#token", TOKEN)
            page.click("#token-form button[type=submit]")
            _until(page, "() => [...document.querySelectorAll('#det-list img.thumb')].some((i) => i.naturalWidth > 0)")
            assert page.evaluate(ROWS) == 1000

            page.select_option("#det-rule", "bird")
            _until(page, f"() => {ROWS} === {rules['bird']} && ghostpiStats.detections.matching === {rules['bird']}")
            rows = page.evaluate("[...document.querySelectorAll('#det-list li')].map((li) => li.dataset.rule)")
            assert set(rows) == {"bird"} and len(rows) == rules["bird"] < 1000

            page.click('.card[data-node="cam-b"] button.detections')  # the node's own timeline, from its card
            both = pairs["cam-b", "bird"]
            _until(page, f"() => {ROWS} === {both} && ghostpiStats.detections.matching === {both}")
            nodes = page.evaluate("[...document.querySelectorAll('#det-list li')].map((li) => li.dataset.node)")
            assert set(nodes) == {"cam-b"} and page.locator("#det-node").input_value() == "cam-b"
            page.select_option("#det-node", "")  # back to the fleet, still birds only

            fresh = start("cam-new", "bird", time.time())  # a node the page has not heard of yet
            sent = time.monotonic()
            feed.publish("ghostpi/cam-new/detections", fresh.to_bytes())
            _until(page, "id => !!document.querySelector(`#det-list li[data-id='${id}'].open`)", fresh.id)
            live = time.monotonic() - sent
            assert page.evaluate(ROWS) == rules["bird"] + 1
            assert page.locator("#det-list li").first.get_attribute("data-node") == "cam-new"
            feed.publish("ghostpi/cam-new/detections", end(fresh, 1.5).to_bytes())
            _until(page, "id => !document.querySelector(`#det-list li[data-id='${id}']`).classList.contains('open')",
                   fresh.id)  # fmt: skip
            assert errors == [], errors
        print(f"published 1000 detections in {published:.1f} s; rendered in {rendered:.1f} s; live in {live:.2f} s")
    finally:
        feed.close()
        dash.close()
