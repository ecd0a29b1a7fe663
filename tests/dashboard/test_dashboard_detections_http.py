"""The timeline's API (issue 21): ``edge-node dashboard`` as a real process on a real mosquitto, detections
published as nodes publish them, read back over HTTP on loopback: pairing, filters, limit, the token rules
(the list like every view, thumbnails always with the token), and clear 400s for bad parameters."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess
from tests.support.dashboard_procs import http_request as _request
from tests.support.detection_feed import end, jpeg, start
from tests.support.nodeproc import Collector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_796_279_600.0


def _get(dash: DashboardProcess, headers: dict[str, str] | None = None, **query: str | float) -> tuple[int, Any]:
    status, _, raw = _request(f"{dash.base}/api/detections?{urlencode(query)}", headers=headers)
    return status, json.loads(raw)


def _until_kept(dash: DashboardProcess, kept: int, headers: dict[str, str] | None = None, **counts: int) -> Any:
    """The timeline once it holds ``kept`` records and the given counters (the broker and the dashboard's tick
    take a moment)."""
    deadline = time.monotonic() + 20
    while True:
        status, data = _get(dash, headers, limit=1)
        assert status == 200, data
        if data["kept"] == kept and all(data[name] == count for name, count in counts.items()):
            return data
        assert time.monotonic() < deadline, (data, dash.log()[-2000:])
        time.sleep(0.1)


def test_the_timeline_pairs_filters_and_limits_what_nodes_published(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dash = DashboardProcess(mosquitto.port, tmp_path)
    node = Collector(mosquitto.port, ("ghostpi/none",))
    try:
        plan = [("door", "cat", 0), ("door", "person", 10), ("yard", "cat", 20), ("yard", "bird", 30)]
        plan.append(("door", "cat", 40))
        firsts = []
        for name, rule, at in plan:
            first = start(name, rule, T0 + at, snapshot=name == "door")
            firsts.append(first)
            node.publish(f"ghostpi/{name}/detections", first.to_bytes())
            if name == "door":
                node.publish(f"ghostpi/{name}/detections/snapshot/{first.id}", jpeg(at))
            if at < 40:  # the last one stays open
                node.publish(f"ghostpi/{name}/detections", end(first, 3.0).to_bytes())
        node.publish("ghostpi/yard/detections/snapshot/bird-1", jpeg())  # of no detection: not kept
        node.publish("ghostpi/yard/detections", b'{"event": "start", "id": "x-1", "rule": "x", "started": NaN}')
        data = _until_kept(dash, 5, bad_payloads=1, orphan_snapshots=1)  # the last two published: all taken
        assert data["open"] == 1 and data["dropped"] == 0 and data["thumbnails_dropped"] == 0
        assert data["rules"] == ["bird", "cat", "person"] and data["nodes"] == ["door", "yard"]
        assert data["oldest"] == T0

        status, everything = _get(dash)
        assert status == 200 and everything["matching"] == 5
        rows = everything["detections"]
        assert [r["id"] for r in rows] == [f.id for f in reversed(firsts)]  # newest first
        assert [r["open"] for r in rows] == [True, False, False, False, False]
        assert rows[1]["duration_s"] == 3.0 and rows[1]["reason"] == "gap" and rows[1]["frames"] == 10
        assert [r["snapshot"] for r in rows] == [True, False, False, True, True]

        assert [r["id"] for r in _get(dash, rule="cat")[1]["detections"]] == [firsts[4].id, firsts[2].id, firsts[0].id]
        assert [r["id"] for r in _get(dash, node="yard")[1]["detections"]] == [firsts[3].id, firsts[2].id]
        assert [r["id"] for r in _get(dash, node="door", rule="cat", until=T0 + 39)[1]["detections"]] == [firsts[0].id]
        timed = _get(dash, since=T0 + 12, until=T0 + 25)[1]  # 10..13 and 20..23 overlap it
        assert [r["id"] for r in timed["detections"]] == [firsts[2].id, firsts[1].id]
        limited = _get(dash, limit=2)[1]
        assert limited["matching"] == 5 and [r["id"] for r in limited["detections"]] == [firsts[4].id, firsts[3].id]
        assert _get(dash, rule="dog")[1]["matching"] == 0

        # thumbnails: always the token, even where viewing is open (a loopback bind)
        thumb = f"{dash.base}/api/detections/door/{firsts[0].id}.jpg"
        status, _, body = _request(thumb)
        assert status == 401 and b"operator token" in body
        status, headers, body = _request(thumb, headers=AUTH)
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and body == jpeg(0)
        assert headers["Cache-Control"] == "no-store"
        assert _request(f"{dash.base}/api/detections/yard/{firsts[2].id}.jpg", headers=AUTH)[0] == 404
        assert _request(f"{dash.base}/api/detections/door/cat%201.jpg", headers=AUTH)[0] == 400
        assert _request(f"{dash.base}/api/detections/bad%20node/cat-1.jpg", headers=AUTH)[0] == 400
    finally:
        node.close()
        dash.close()


BAD = [
    ({"limit": "0"}, "limit must be a whole number from 1 to 2000"),
    ({"limit": "2001"}, "limit must be a whole number from 1 to 2000"),
    ({"limit": "ten"}, "limit must be a whole number"),
    ({"since": "yesterday"}, "since must be a time in seconds since the epoch"),
    ({"until": "nan"}, "until must be a time in seconds since the epoch"),
    ({"since": "inf"}, "since must be a time"),
    ({"since": "20", "until": "10"}, "since must not be later than until"),
    ({"node": "no/such node"}, "node must be a node id"),
    ({"rule": "r" * 65}, "rule must be a watch rule's name"),
    ({"nodes": "door"}, "unknown parameter 'nodes'"),
]


def test_bad_parameters_get_a_400_that_says_what_to_send(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dash = DashboardProcess(mosquitto.port, tmp_path)
    try:
        for query, says in BAD:
            status, data = _get(dash, None, **query)
            assert status == 400 and says in data["error"], (query, data)
        assert _get(dash, since="1796279600.5", until="1796279700", limit="2000")[0] == 200  # the edges are fine
    finally:
        dash.close()


def test_the_timeline_needs_the_token_where_viewing_does(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dash = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN="true")
    node = Collector(mosquitto.port, ("ghostpi/none",))
    try:
        first = start("door", "cat", T0)
        node.publish("ghostpi/door/detections", first.to_bytes())
        assert _get(dash)[0] == 401
        assert _get(dash, {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        data = _until_kept(dash, 1, headers=AUTH)
        assert data["kept"] == 1 and _get(dash, AUTH)[1]["detections"][0]["id"] == first.id
    finally:
        node.close()
        dash.close()


def test_with_the_recorders_history_the_timeline_reaches_back_days(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """EDGE_DASHBOARD__DETECTIONS_HISTORY: the timeline adds the recorder's detections to what the dashboard saw;
    one both know is shown once, as the dashboard saw it (with its thumbnail)."""
    from edge_node.record.rows import to_row
    from edge_node.record.sqlite import SqliteStore

    now = time.time()
    old, both = start("porch", "cat", now - 2 * 86400), start("door", "cat", now - 60, snapshot=True)
    rows = [to_row(d.node, "detections", d.to_bytes(), now) for d in (old, end(old), both, end(both))]
    db = tmp_path / "history.db"
    store = SqliteStore(db)
    store.write([r for r in rows if r is not None])
    store.close()
    dash = DashboardProcess(
        mosquitto.port, tmp_path, EDGE_DASHBOARD__DETECTIONS_HISTORY="true", EDGE_RECORD__PATH=str(db)
    )
    node = Collector(mosquitto.port, ("ghostpi/none",))
    try:
        live = start("yard", "bird", now - 5)
        for d in (both, end(both), live):
            node.publish(f"ghostpi/{d.node}/detections", d.to_bytes())
        node.publish(f"ghostpi/door/detections/snapshot/{both.id}", jpeg())
        _until_kept(dash, 2)
        status, data = _get(dash, since=now - 3 * 86400)
        assert status == 200 and data["history"] == "ok", data
        rows_shown = data["detections"]
        assert [r["id"] for r in rows_shown] == [live.id, both.id, old.id] and data["matching"] == 3
        assert rows_shown[1]["snapshot"] is True and "source" not in rows_shown[1]  # the dashboard's own copy
        assert rows_shown[2]["source"] == "history" and rows_shown[2]["snapshot"] is False
        assert rows_shown[2]["duration_s"] == 2.0 and rows_shown[2]["open"] is False
        assert [r["id"] for r in _get(dash, node="porch", since=now - 3 * 86400)[1]["detections"]] == [old.id]
        assert [r["id"] for r in _get(dash, since=now - 3600)[1]["detections"]] == [live.id, both.id]
    finally:
        node.close()
        dash.close()


def test_detections_history_without_a_database_says_what_to_do(tmp_path: Path) -> None:
    from tests.support.paths import clean_env, run_cli

    env = clean_env(
        EDGE_DASHBOARD__DETECTIONS_HISTORY="true", EDGE_STATE_DIR=str(tmp_path), EDGE_DASHBOARD__TOKEN=TOKEN
    )
    out = run_cli("dashboard", "--port", "0", env=env)
    assert out.returncode != 0 and "run `edge-node record` first" in out.stderr, out.stderr
