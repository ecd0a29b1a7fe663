"""A card's chart and label counts over 1 h, 24 h and 7 days from the recorder's database (issue 20):
``edge-node dashboard`` as a real process reading a SQLite file, or a fresh PostgreSQL database, filled through
the recorder's own store; ``GET /api/nodes/<node>/history`` over HTTP on loopback: the numbers, the bounds,
the token rules and clear errors (a bad range, no recorder)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess
from tests.support.dashboard_procs import http_request as _request
from tests.support.history_fill import HOURLY_24H, LABELS_24H, fill

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _get(dash: DashboardProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, raw = _request(f"{dash.base}{path}", headers=headers)
    return status, json.loads(raw)


@contextmanager
def _recorder(kind: str, tmp_path: Path, now: float) -> Iterator[dict[str, Any]]:
    """The settings that point the dashboard at a filled recorder database of ``kind`` (typed Any for
    DashboardProcess's keywords, which are environment variables here)."""
    if kind == "sqlite":
        from edge_node.record.sqlite import SqliteStore

        db = tmp_path / "history.db"
        store = SqliteStore(db)
        fill(store, now)
        store.close()
        yield {"EDGE_RECORD__PATH": str(db)}
        return
    from edge_node.record.postgres import PostgresStore
    from tests.support.postgres import fresh_database

    with fresh_database() as dsn:
        pg = PostgresStore(dsn)
        fill(pg, now)
        pg.close()
        yield {"EDGE_RECORD__DSN": dsn}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_nodes_chart_and_hourly_labels_come_from_the_recorder(
    kind: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    now = time.time()
    hour = math.floor(now / 3600) * 3600
    with _recorder(kind, tmp_path, now) as env:
        dash = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__HISTORY="true", **env)
        try:
            status, config = _get(dash, "/api/config")
            assert status == 200 and config["history_ranges"] == ["1h", "24h", "7d"]
            assert config["history_refresh_seconds"] == {"1h": 60.0, "24h": 300.0, "7d": 300.0}  # the defaults

            status, day = _get(dash, "/api/nodes/door/history?range=24h")
            assert status == 200, day
            assert day["source"] == "history" and day["node"] == "door" and day["range"] == "24h"
            assert day["step"] == 720 and day["since"] % 720 == 0 and day["until"] - day["since"] <= 86400
            series = day["series"]
            # a heartbeat every 5 min: every 12-min bucket has some (the newest may not yet, if the clock
            # turned a bucket since the database was filled)
            assert 119 <= len(series) <= 120, len(series)
            assert [p["ts"] for p in series] == sorted(p["ts"] for p in series)
            peak = [p for p in series if hour - 5 * 3600 <= p["ts"] < hour - 4 * 3600]
            assert len(peak) == 5 and {(p["fps"], p["inference_ms"]) for p in peak} == {(20.0, 60.0)}
            assert {(p["fps"], p["inference_ms"]) for p in series if p not in peak} == {(10.0, 40.0)}
            assert {(p["cpu_temp_c"], p["rss_mb"]) for p in series} == {(50.0, 120.0)}  # never yard's 99 fps

            assert day["labels"] == LABELS_24H
            assert day["hours_since"] == math.floor((day["until"] - 86400) / 3600) * 3600
            rows = {round((hour - r["ts"]) / 3600): (r["counts"], r["other"], r["total"]) for r in day["hourly_labels"]}
            recent = {ago: row for ago, row in rows.items() if ago <= 1}  # two cats a minute ago: this hour or the last
            assert sum(total for _, _, total in recent.values()) == 2 and len(recent) <= 2
            assert {ago: row for ago, row in rows.items() if ago > 1} == HOURLY_24H

            status, last_hour = _get(dash, "/api/nodes/door/history?range=1h")
            assert status == 200 and last_hour["step"] == 60 and last_hour["labels"] == ["cat"]
            assert sum(r["total"] for r in last_hour["hourly_labels"]) == 2
            assert 11 <= len(last_hour["series"]) <= 13  # a heartbeat every 5 min over the hour
            assert {p["fps"] for p in last_hour["series"]} == {10.0}

            status, week = _get(dash, "/api/nodes/door/history?range=7d")
            assert status == 200 and week["step"] == 5040 and len(week["series"]) <= 120
            assert [round((hour - r["ts"]) / 3600) for r in week["hourly_labels"]][:4] == [30, 5, 3, 2]
            assert week["labels"][:2] == ["cat", "bird"]
            assert sum(r["total"] for r in week["hourly_labels"]) == 37
            assert max(p["fps"] for p in week["series"]) <= 20.0  # 84-min buckets: averages of 10 and 20

            status, yard = _get(dash, "/api/nodes/yard/history?range=24h")
            assert status == 200 and [p["fps"] for p in yard["series"]] == [99.0]
            assert yard["labels"] == ["cat"] and [r["counts"] for r in yard["hourly_labels"]] == [[50]]
            status, nobody = _get(dash, "/api/nodes/nobody/history?range=7d")
            assert status == 200 and nobody["series"] == [] and nobody["hourly_labels"] == [] and nobody["labels"] == []
        finally:
            dash.close()


BAD = [
    ("/api/nodes/door/history", 400, "range must be one of 1h, 24h, 7d"),
    ("/api/nodes/door/history?range=2h", 400, "range must be one of 1h, 24h, 7d, not '2h'"),
    ("/api/nodes/door/history?range=24h&points=5000", 400, "unknown parameter 'points'"),
    ("/api/nodes/no%20such%20node/history?range=24h", 400, "is not a node id"),
]


def test_the_history_api_needs_the_token_where_viewing_does_and_says_what_is_wrong(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    now = time.time()
    with _recorder("sqlite", tmp_path, now) as env:
        dash = DashboardProcess(
            mosquitto.port, tmp_path, EDGE_DASHBOARD__HISTORY="true", EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN="true", **env
        )
        try:
            status, refused = _get(dash, "/api/nodes/door/history?range=24h")
            assert status == 401 and "operator token" in refused["error"]
            wrong = {"Authorization": "Bearer wrong-token-0123456789"}
            assert _get(dash, "/api/nodes/door/history?range=24h", wrong)[0] == 401
            status, day = _get(dash, "/api/nodes/door/history?range=24h", AUTH)
            assert status == 200 and day["labels"] == LABELS_24H
            for path, code, says in BAD:
                status, data = _get(dash, path, AUTH)
                assert status == code and says in data["error"], (path, data)
            status, headers, _ = _request(f"{dash.base}/api/nodes/door/history?range=1h", headers=AUTH)
            assert status == 200 and headers["Cache-Control"] == "no-store"
        finally:
            dash.close()


def test_without_a_recorder_the_history_api_says_how_to_get_one(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dash = DashboardProcess(mosquitto.port, tmp_path)
    try:
        assert _get(dash, "/api/config")[1]["history_ranges"] == []
        status, data = _get(dash, "/api/nodes/door/history?range=24h")
        assert status == 404 and "set EDGE_DASHBOARD__HISTORY=true" in data["error"], data
    finally:
        dash.close()


def test_the_history_setting_without_a_database_says_to_run_the_recorder(tmp_path: Path) -> None:
    from tests.support.paths import clean_env, run_cli

    env = clean_env(EDGE_DASHBOARD__HISTORY="true", EDGE_STATE_DIR=str(tmp_path), EDGE_DASHBOARD__TOKEN=TOKEN)
    out = run_cli("dashboard", "--port", "0", env=env)
    assert out.returncode != 0 and "run `edge-node record` first" in out.stderr, out.stderr
