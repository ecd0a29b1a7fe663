"""The dashboard's fleet state, without I/O: lenient decoding, deltas of changed nodes only, staleness,
bounded history and events, the fleet summary."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_node.config import DashboardConfig
from edge_node.dashboard.board import Board
from edge_node.fleet.simnode import SimNode
from edge_node.messages import Event, OtaStatus

CFG = DashboardConfig(stale_after=10, history_seconds=20, history_interval=2, events_kept=3)


def _names(delta: dict[str, Any]) -> list[str]:
    return sorted(n["node"] for n in delta["nodes"])


def test_changed_nodes_only_and_unchanged_payloads_cost_nothing() -> None:
    board = Board("gp", CFG)
    a, b = SimNode("a"), SimNode("b")
    latest = {
        "gp/a/status": b"online",
        "gp/b/status": b"online",
        "gp/a/predictions": a.prediction(),
        "gp/b/predictions": b.prediction(),
        "gp/a/state": a.state(),
        "other/x/status": b"online",  # foreign prefix
        "gp/a/control": b"{}",  # not a published leaf
    }
    first = board.update([(t, p, 100.0) for t, p in latest.items()], [], 100.0, 1000.0)
    assert _names(first) == ["a", "b"] and first["summary"]["online"] == 2
    card = next(n for n in first["nodes"] if n["node"] == "a")
    assert card["status"] == "online" and card["predictions"]["label"] and card["state"]["mode"] == "high"
    assert card["seen"]["predictions"] == 1000.0

    latest["gp/b/predictions"] = b.prediction()  # only b publishes again
    second = board.update([(t, p, 100.2) for t, p in latest.items()], [], 100.25, 1000.25)
    assert _names(second) == ["b"] and "summary" not in second  # the summary did not change
    third = board.update([(t, p, 100.2) for t, p in latest.items()], [], 100.5, 1000.5)
    assert third["nodes"] == []


def test_payloads_from_newer_nodes_are_read_leniently() -> None:
    board = Board("gp", CFG)
    pred = json.loads(SimNode("n").prediction())
    pred["model"]["runtime"] = "litert"  # fields this dashboard's wire models do not know
    pred["new_field"] = {"x": 1}
    beat = json.loads(SimNode("n").heartbeat())
    workers = [{"busy_percent": 62.0, "frames": 9}, {"busy_percent": 58.4, "frames": 8}]
    beat |= {"frames_failed": 2, "restarts": {"pipeline": 1}, "dropped_offline": {"predictions": 7}}
    beat |= {"pipeline": "stalled", "workers": workers, "future_counter": 3, "future_list": [{"load": 0.5}]}
    delta = board.update(
        [
            ("gp/n/predictions", json.dumps(pred).encode(), 1.0),
            ("gp/n/heartbeat", json.dumps(beat).encode(), 1.0),
            ("gp/n/state", b"not json", 1.0),
        ],
        [],
        1.0,
        50.0,
    )
    [card] = delta["nodes"]
    assert card["predictions"]["model"] == {"name": "sim-mobilenet", "version": "1.0.0", "precision": "int8",
                                            "runtime": "litert"}  # fmt: skip
    hb = card["heartbeat"]
    assert hb["pipeline"] == "stalled" and hb["rss_mb"] > 0 and hb["frames_failed"] == 2
    assert hb["restarts_pipeline"] == 1 and hb["dropped_offline_predictions"] == 7 and hb["workers_busy"] == "62% 58%"
    other = hb["other"]
    assert other["future_counter"] == 3 and other["future_list"] == '[{"load":0.5}]'  # unknown fields, generically
    assert card["bad_payloads"] == 1 and "state" not in card


def test_stale_then_offline_and_the_summary_counts_versions() -> None:
    board = Board("gp", CFG)
    b = SimNode("b")
    b.model = b.model.model_copy(update={"version": "2"})
    board.update(
        [
            ("gp/a/status", b"online", 0.0),
            ("gp/a/heartbeat", SimNode("a").heartbeat(), 0.0),
            ("gp/b/status", b"online", 0.0),
            ("gp/b/predictions", b.prediction(), 0.0),
        ],
        [],
        0.0,
        100.0,
    )
    assert board.summary()["versions"] == {"1.0.0": 1, "2": 1}
    quiet = board.update([], [], 10.5, 110.5)  # nothing for more than stale_after
    assert {n["node"]: n["status"] for n in quiet["nodes"]} == {"a": "stale", "b": "stale"}
    assert quiet["summary"]["stale"] == 2 and quiet["summary"]["online"] == 0
    gone = board.update([("gp/a/status", b"offline", 11.0)], [], 11.0, 111.0)
    assert [(n["node"], n["status"]) for n in gone["nodes"]] == [("a", "offline")]
    assert gone["summary"]["offline"] == 1 and gone["summary"]["versions"] == {"2": 1}  # offline nodes run nothing


def test_a_node_just_discovered_is_not_stale_before_it_had_time_to_speak() -> None:
    board = Board("gp", CFG)
    board.update([("gp/a/status", b"online", 5.0)], [], 5.0, 5.0)
    assert board.update([], [], 14.0, 14.0)["nodes"] == []
    assert board.update([], [], 16.0, 16.0)["nodes"][0]["status"] == "stale"


def test_history_is_sampled_per_interval_and_bounded() -> None:
    board = Board("gp", CFG)
    sim = SimNode("a")
    points = 0
    for step in range(100):  # 25 s at 4 Hz, a new prediction every tick
        now = step * 0.25
        delta = board.update([("gp/a/predictions", sim.prediction(), now)], [], now, 1000 + now)
        points += sum(len(n.get("history", [])) for n in delta["nodes"])
    assert 12 <= points <= 13  # one per 2 s
    history = board.full(25.0, 1025.0)["nodes"][0]["history"]
    assert len(history) == board.points == 10  # 20 s / 2 s, oldest dropped
    t, fps, inference = history[-1]
    assert t > history[0][0] and fps > 0 and inference > 0
    board.update([], [], 30.0, 1030.0)  # takes the point from the last prediction, if not sampled yet
    assert board.update([], [], 33.0, 1033.0)["nodes"] == []  # no new data: a gap, not a repeated point


def test_every_event_and_ota_phase_is_kept_in_order_and_bounded() -> None:
    board = Board("gp", CFG)
    events = [("gp/a/events", Event(id=f"e{i}", cmd="ping", ok=True).to_bytes(), 1.0) for i in range(5)]
    phases = [
        ("gp/a/ota", OtaStatus(node="a", ts=1, phase=p, version="2", id="u1", progress=pr).to_bytes(), 1.0)
        for p, pr in (("downloading", 10.0), ("downloading", 90.0), ("verifying", None), ("activating", None),
                      ("active", None))
    ]  # fmt: skip
    delta = board.update([], [*events, *phases, ("gp/a/events", b"[]", 1.0)], 1.0, 1.0)
    [card] = delta["nodes"]
    assert [e["id"] for e in card["events"]] == ["e0", "e1", "e2", "e3", "e4"]  # all five reach the browser
    assert card["ota"]["phase"] == "active" and card["ota"]["trail"] == [
        "downloading", "verifying", "activating", "active"
    ]  # fmt: skip
    full = board.full(2.0, 2.0)["nodes"][0]
    assert [e["id"] for e in full["events"]] == ["e2", "e3", "e4"]  # events_kept=3 for late joiners
    again = board.update([], [("gp/a/ota", OtaStatus(node="a", ts=2, phase="downloading", id="u2").to_bytes(), 3)],
                         3.0, 3.0)  # fmt: skip
    assert again["nodes"][0]["ota"]["trail"] == ["downloading"]  # a new update starts a new trail


def test_snapshots_are_kept_per_node_with_a_version() -> None:
    board = Board("gp", CFG)
    assert board.snapshot("a") is None
    delta = board.update([("gp/a/snapshot", b"\xff\xd8one", 1.0)], [], 1.0, 500.0)
    assert delta["nodes"][0]["snapshot"] == {"version": 1, "bytes": 5, "at": 500.0}
    board.update([("gp/a/snapshot", b"\xff\xd8two!", 2.0)], [], 2.0, 501.0)
    assert board.snapshot("a") == (b"\xff\xd8two!", 2)


@pytest.mark.parametrize(
    "number",
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400],
    ids=["nan", "inf", "-inf", "1e999", "-1e999", "huge-int"],
)
def test_a_payload_with_a_number_a_browser_cannot_read_is_bad_and_never_passed_on(number: str) -> None:
    """json.loads takes NaN and 1e999 (inf); a browser's JSON.parse does not take them back. One such
    heartbeat on the stream broke the page for every viewer, and an integer past float range crashed the
    batch. Such a payload is counted as bad, and nothing of it reaches the delta, the card or the chart."""
    board = Board("gp", CFG)
    good = json.loads(SimNode("n").heartbeat())
    board.update([("gp/n/status", b"online", 0.0), ("gp/n/heartbeat", json.dumps(good).encode(), 0.0)], [], 0.0, 0.0)
    evil = json.dumps(good).replace('"fps": ', f'"fps": {number}, "was": ', 1).encode()
    pred = SimNode("n").prediction().replace(b'"fps":', f'"fps":{number},"was":'.encode(), 1)
    assert f'"fps": {number}'.encode() in evil and f'"fps":{number}'.encode() in pred
    delta = board.update([("gp/n/heartbeat", evil, 5.0), ("gp/n/predictions", pred, 5.0)], [], 5.0, 5.0)
    [card] = delta["nodes"]
    assert card["bad_payloads"] == 2 and "heartbeat" not in card and "predictions" not in card
    json.dumps(delta, allow_nan=False)  # what the server writes: raises on NaN or Infinity
    json.dumps(board.full(6.0, 6.0), allow_nan=False)
    assert board.full(6.0, 6.0)["nodes"][0]["heartbeat"]["fps"] == good["fps"]  # the last good one stays


def test_strings_fields_and_lists_from_a_node_are_cut_to_a_bounded_size() -> None:
    """A node's payload can be as large as the broker allows; what the card keeps of it is bounded."""
    board = Board("gp", CFG)
    huge = "x" * 50_000
    beat = json.loads(SimNode("n").heartbeat())
    beat |= {"last_error": huge, "camera": huge, "restarts": {f"r{i}{huge[:500]}": i for i in range(500)}}
    beat |= {f"extra_{i}_{huge[:300]}": huge for i in range(500)} | {"workers": [{"busy_percent": 50.0}] * 500}
    pred = json.loads(SimNode("n").prediction())
    pred |= {"label": huge, "top_k": [{"label": huge, "confidence": 0.5}] * 50}
    detail = {f"k{i}{huge[:300]}": huge for i in range(500)}
    streamed = [("gp/n/events", json.dumps({"id": huge, "cmd": huge, "ok": False, "error": huge,
                                             "detail": detail}).encode(), 1.0)]  # fmt: skip
    latest = [("gp/n/heartbeat", json.dumps(beat).encode(), 1.0), ("gp/n/predictions", json.dumps(pred).encode(), 1.0)]
    delta = board.update(latest, streamed, 1.0, 1.0)
    assert len(json.dumps(delta)) < 40_000, len(json.dumps(delta))  # from ~3 MB of payloads
    [card] = delta["nodes"]
    assert len(card["heartbeat"]["last_error"]) == 200 and len(card["predictions"]["label"]) == 200
    assert card["heartbeat"]["other"]["more fields"] > 0 and len(card["predictions"]["top_k"]) == 5
    assert all(len(key) <= 64 for key in card["events"][0]["detail"])
