"""The monitor's fleet model: rows from raw payloads, staleness, problems first, bad payloads counted."""

from __future__ import annotations

import json
import sys
from collections import Counter
from types import FrameType
from typing import Any

from edge_node.fleet import view as view_module
from edge_node.fleet.simnode import SimNode
from edge_node.fleet.table import render, summarize
from edge_node.fleet.view import FleetView


def _fleet(view: FleetView, node: str, now: float, *, status: bytes = b"online") -> SimNode:
    sim = SimNode(node)
    view.ingest(f"ghostpi/{node}/status", status, now)
    view.ingest(f"ghostpi/{node}/state", sim.state(), now)
    view.ingest(f"ghostpi/{node}/heartbeat", sim.heartbeat(), now)
    view.ingest(f"ghostpi/{node}/predictions", sim.prediction(), now)
    return sim


def test_rows_decode_the_latest_payloads() -> None:
    view = FleetView("ghostpi", stale_after=10)
    sim = _fleet(view, "a", 100.0)
    sim.handle(b'{"cmd": "set_mode", "mode": "performance"}')
    view.ingest("ghostpi/a/state", sim.state(), 101.0)  # newer than the last prediction
    view.ingest("ghostpi/a/events", b'{"cmd": "set_mode", "ok": true}', 101.0)
    view.ingest("other/a/status", b"offline", 101.0)  # foreign prefix: ignored
    view.ingest("ghostpi/a/control", b"{}", 101.0)  # not a published leaf: ignored
    [row] = view.snapshot(now=102.0)
    assert row.node == "a" and row.online and not row.stale
    assert row.mode == "performance" and row.resolution == 160  # from the newer state message
    assert row.label and row.confidence is not None and row.fps and row.inference_ms
    assert row.camera == "ok" and row.cpu_temp_c is not None
    assert row.heartbeat_age_s == 2.0 and row.prediction_age_s == 2.0 and row.last_seen_age_s == 1.0
    assert row.last_event == "set_mode: ok" and row.bad_payloads == 0
    assert view.messages == 8
    json.dumps(row.to_dict())  # --json output must serialise


def test_offline_and_stale_rows_come_first() -> None:
    view = FleetView("ghostpi", stale_after=10)
    _fleet(view, "fresh", 100.0)
    _fleet(view, "silent", 80.0)  # online per retained status, but nothing for 25 s
    _fleet(view, "gone", 100.0, status=b"offline")
    view.ingest("ghostpi/fresh/predictions", b"not json", 104.0)
    rows = view.snapshot(now=105.0)
    assert [r.node for r in rows] == ["gone", "silent", "fresh"]
    gone, silent, fresh = rows
    assert gone.status == "offline" and not gone.online and not gone.stale
    assert silent.online and silent.stale
    assert fresh.online and not fresh.stale and fresh.bad_payloads == 1 and fresh.label is None
    assert summarize(rows) == {"total": 3, "online": 2, "offline": 1, "unknown": 0, "stale": 1}
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(rows, prefix="ghostpi", rate=123.0, limit=2))
    screen = console.export_text()
    assert "2 online" in screen and "1 offline" in screen and "1 stale" in screen
    assert "gone" in screen and "silent" in screen and "1 more nodes" in screen


def test_unknown_status_without_retained_status() -> None:
    view = FleetView("ghostpi")
    view.ingest("ghostpi/x/predictions", SimNode("x").prediction(), 1.0)
    [row] = view.snapshot(now=1.5)
    assert row.status == "unknown" and not row.online and not row.stale


def _newer(payload: bytes, **extra: object) -> bytes:
    return json.dumps(json.loads(payload) | extra).encode()


def test_a_newer_nodes_extra_fields_are_read_past_not_counted_bad() -> None:
    """``monitor`` reads payloads as the web dashboard does: fields it does not know are no reason to refuse."""
    view = FleetView("ghostpi")
    sim = SimNode("new")
    view.ingest("ghostpi/new/status", b"online", 1.0)
    view.ingest("ghostpi/new/predictions", _newer(sim.prediction(), detections=[{"box": [1, 2, 3, 4]}]), 1.0)
    beat = json.loads(sim.heartbeat()) | {"gpu_temp_c": 41.0, "publish_denied": 3}
    beat["dropped_offline"] = {"predictions": 5, "heartbeat": 2, "newer_kind": 1}
    view.ingest("ghostpi/new/heartbeat", json.dumps(beat).encode(), 1.0)
    view.ingest("ghostpi/new/state", _newer(sim.state(), history={"minutes": 10}), 1.0)
    view.ingest("ghostpi/new/events", b'{"cmd": "set_mode", "ok": false, "error": "busy", "trace": "x"}', 1.0)
    [row] = view.snapshot(now=2.0)
    assert row.bad_payloads == 0
    assert row.label == json.loads(sim.prediction())["label"] and row.confidence is not None
    assert (row.mode, row.resolution) == ("high", 224) and row.model_version == "1.0.0"
    assert row.camera == "ok" and row.denied == 3 and row.dropped_offline == 8
    assert row.last_event == "set_mode: busy"


def test_payloads_a_browser_could_not_read_still_count_bad() -> None:
    """Lenient about fields, strict about numbers: the dashboard's rule, now the monitor's too."""
    view = FleetView("ghostpi")
    sim = SimNode("n")
    view.ingest("ghostpi/n/predictions", sim.prediction().replace(b'"fps":', b'"fps":NaN,"x":', 1), 1.0)
    view.ingest("ghostpi/n/heartbeat", b"[1, 2]", 1.0)  # JSON, but not an object
    view.ingest("ghostpi/n/state", b'{"mode": "balanced", "resolution": 1e999}', 1.0)
    [row] = view.snapshot(now=1.5)
    assert row.bad_payloads == 3 and row.label is None and row.resolution is None


def test_one_payload_object_under_two_leaves_is_decoded_for_each() -> None:
    """The decode cache is per leaf: the same bytes object as a state and as an event is read both ways."""
    view = FleetView("ghostpi")
    shared = b'{"cmd": "ping", "ok": true, "mode": "high", "resolution": 224}'
    view.ingest("ghostpi/x/state", shared, 1.0)
    view.ingest("ghostpi/x/events", shared, 1.0)
    [row] = view.snapshot(now=1.5)
    assert row.last_event == "ping: ok" and (row.mode, row.resolution) == ("high", 224) and row.bad_payloads == 0


def test_heartbeats_only_rows_show_the_server_and_failovers() -> None:
    """``monitor --no-predictions`` (a fleet of thousands): rows from heartbeat and state alone, with the server."""
    from edge_node.fleet.monitor import MonitorOptions

    assert "predictions" not in MonitorOptions(predictions=False).leaves
    assert "predictions" in MonitorOptions().leaves
    view = FleetView("ghostpi", stale_after=30)
    sim = SimNode("a")
    view.ingest("ghostpi/a/status", b"online", 100.0)
    view.ingest("ghostpi/a/heartbeat", sim.heartbeat(server="nats2.lan:8883", failovers=2), 100.0)
    [row] = view.snapshot(now=110.0)
    assert row.online and not row.stale and row.label is None and row.fps
    assert row.server == "nats2.lan:8883" and row.failovers == 2
    assert "nats2.lan:8883 (2 failovers)" in _text(render([row], prefix="ghostpi"))


def _text(renderable: object) -> str:
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(renderable)
    return console.export_text()


def test_paho_may_write_between_any_two_steps_of_a_reader() -> None:
    """Regression (CI of stop 23): ``monitor --once`` died of "dictionary changed size during iteration"
    because a reader iterated the live dict while paho's thread added topics. A thread switch can come
    between any two bytecodes, so a tracer plays paho's thread there, deterministically: at the first
    steps of every function and comprehension of the view, a new node's topic arrives (unless the
    writer would have to wait for the view's lock, as the real thread would)."""
    view = FleetView("ghostpi", stale_after=10)
    for i in range(20):
        _fleet(view, f"seed{i}", 1.0)
    lock = getattr(view, "_lock", None)
    written: Counter[object] = Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:  # sys.settrace wants its own TraceFunction
        if frame.f_code.co_filename != view_module.__file__:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode" and written[frame.f_code] < 20 and not (lock is not None and lock.locked()):
            view.ingest(f"ghostpi/late{sum(written.values())}/status", b"online", 2.0)
            written[frame.f_code] += 1
        return tracer

    sys.settrace(tracer)
    try:
        rows = view.snapshot(now=3.0)
        entries = view.entries()
        nodes = view.node_ids()
    finally:
        sys.settrace(None)
    assert written, "the tracer never ran inside the view: the test tests nothing"
    assert len(rows) >= 20 and len(entries) >= 80 and len(nodes) >= 20
    assert len(view.snapshot(now=3.0)) == 20 + sum(written.values())
