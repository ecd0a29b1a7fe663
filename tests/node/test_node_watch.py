"""Watch rules on a real node process, a real mosquitto and the demo camera (issue 21's bars)."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.watch import GROUPS
from edge_node.wire import Detection, Event, Heartbeat, NodeState
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector, NodeProcess, answer_to
from tests.support.paths import clean_env, run_cli

pytestmark = pytest.mark.slow

T = "ghostpi/node-w"
FPS = 5.0  # the demo camera holds each photo 2 s (capture.factory.DEMO_HOLD_S): 10 frames of the cat per cycle
HOLD_S = 2.0
CYCLE_S = 4 * HOLD_S  # cat, coffee, rocket, astronaut
CATS = {name for _, name in GROUPS["cat"]}
WATCH_S = 60.0  # the bar: exactly one start and one end per appearance of the cat over 60 s
CAT_RULE = {"name": "cat", "classes": ["cat"], "min_confidence": 0.3, "min_frames": 3}


def _env(mosquitto: Mosquitto, tmp_path: Path, rules: list[dict[str, object]]) -> dict[str, str]:
    return {
        "EDGE_NODE_ID": "node-w",
        "EDGE_MQTT__HOST": "127.0.0.1",
        "EDGE_MQTT__PORT": str(mosquitto.port),
        "EDGE_MQTT__KEEPALIVE": "5",
        "EDGE_MQTT__RECONNECT_MAX": "2",
        "EDGE_CAMERA__SOURCE": "demo",
        "EDGE_CAMERA__FPS": str(FPS),
        "EDGE_MODEL__THREADS": "1",
        "EDGE_HEARTBEAT__INTERVAL": "1",
        "EDGE_STATE_DIR": str(tmp_path / "state"),
        "EDGE_WATCH__RULES": json.dumps(rules),
    }


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    procs: list[NodeProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.alive():
                proc.terminate()


def _detections(bus: Collector) -> list[Detection]:
    return [Detection.model_validate_json(m.payload) for m in bus.on(f"{T}/detections")]


def _wait_detection(bus: Collector, node: NodeProcess, pred: str, timeout: float, **match: object) -> Detection:
    try:
        m = bus.wait(
            f"{T}/detections",
            lambda m: all(json.loads(m.payload).get(k) == v for k, v in match.items()),
            timeout=timeout,
        )
    except AssertionError as exc:
        raise AssertionError(f"{pred}: {exc}\n--- node log ---\n{node.log()[-3000:]}") from None
    return Detection.model_validate_json(m.payload)


def test_one_start_and_one_end_per_appearance_of_the_cat(
    mosquitto: Mosquitto, bus: Collector, tmp_path: Path, started: list[NodeProcess]
) -> None:
    rules = [CAT_RULE, {"name": "dog", "classes": ["dog"], "min_confidence": 0.3, "min_frames": 3}]
    node = NodeProcess(_env(mosquitto, tmp_path, rules), tmp_path / "node").start()
    started.append(node)
    state = NodeState.model_validate_json(bus.wait(f"{T}/state", timeout=120).payload)
    assert state.watch is not None and [r.name for r in state.watch.rules] == ["cat", "dog"]
    # The bar's 60 s of camera time from the first detection: about 7 appearances of the cat (the first may have
    # begun before the first inference, the last may be cut by the shutdown; the ones between are whole).
    first = _wait_detection(bus, node, "a first detection", 120)
    watched_until = time.monotonic() + WATCH_S
    while (left := watched_until - time.monotonic()) > 0:
        with contextlib.suppress(AssertionError):  # no detection in this slice: the counts below judge that
            bus.wait(f"{T}/detections", since=time.monotonic(), timeout=min(left, 2 * CYCLE_S))
    node.terminate()
    assert first.event == "start"
    said = _detections(bus)
    assert {d.rule for d in said} == {"cat"}, "a detection for something else than the cat"
    assert all(d.label in CATS for d in said)
    # Balanced, in order: start, end, start, end ... with the same id (a shutdown may end the last one).
    events = [(d.event, d.id) for d in said]
    assert [e for e, _ in events] == ["start", "end"] * (len(events) // 2), events
    assert all(events[i][1] == events[i + 1][1] for i in range(0, len(events), 2))
    ends = [d for d in said if d.event == "end" and d.reason == "gap"]
    starts = [d for d in said if d.event == "start"]
    assert len(starts) >= WATCH_S // CYCLE_S and len(ends) >= WATCH_S // CYCLE_S - 1, (len(starts), len(ends))
    # One per appearance: the cat shows once per cycle, so starts are a cycle apart.
    gaps = [b.started - a.started for a, b in itertools.pairwise(starts)]
    assert all(abs(g - CYCLE_S) <= 1.0 / FPS + 0.5 for g in gaps), gaps
    # Whole appearances last the hold time less one frame (first to last cat frame), within one frame interval.
    for end in ends[1:]:
        assert end.duration_s is not None and abs(end.duration_s - (HOLD_S - 1 / FPS)) <= 1 / FPS, end
        assert end.frames >= HOLD_S * FPS - 2, end  # a loaded machine may drop a frame (newest wins)
        assert end.mean_confidence is not None and 0.3 <= end.mean_confidence <= end.peak_confidence
    hb = Heartbeat.model_validate_json(bus.on(f"{T}/heartbeat")[-1].payload)
    assert hb.detections["cat"] >= len(starts) - 1 and hb.detections["dog"] == 0
    print("WATCHED", WATCH_S, "s:", len(starts), "starts,", len(ends), "gap ends, gaps", gaps, "durations",
          [e.duration_s for e in ends])  # fmt: skip
    print("CAPTURED", [d.to_bytes().decode() for d in said[:4]])


def test_kill_9_mid_detection_is_ended_on_restart(
    mosquitto: Mosquitto, bus: Collector, tmp_path: Path, started: list[NodeProcess]
) -> None:
    rules = [{**CAT_RULE, "gap_s": 60.0}]  # no gap ends it while the test runs
    env = _env(mosquitto, tmp_path, rules)
    node = NodeProcess(env, tmp_path / "node").start()
    started.append(node)
    start = _wait_detection(bus, node, "a start", 120, event="start")
    # The journal is written on start; a refresh can follow, so wait until it names this detection.
    journal = tmp_path / "state" / "watch-open.json"
    deadline = time.monotonic() + 30
    while start.id not in (journal.read_text() if journal.exists() else ""):
        assert time.monotonic() < deadline, "the open detection was never written to the state dir"
        bus.wait(f"{T}/heartbeat", since=time.monotonic(), timeout=30)
    node.kill9()
    assert not [d for d in _detections(bus) if d.event == "end"], "nothing may end it before the restart"
    again = NodeProcess(env, tmp_path / "node2").start()
    started.append(again)
    end = _wait_detection(bus, again, "the restart's end", 120, event="end", id=start.id)
    assert end.reason == "restart" and end.rule == "cat" and end.started == start.started
    said = Event.model_validate_json(
        bus.wait(f"{T}/events", lambda m: json.loads(m.payload)["cmd"] == "detection_recovered").payload
    )
    assert start.id in (said.error or "")


def test_set_watch_replaces_rules_and_bad_rules_are_refused(
    mosquitto: Mosquitto, bus: Collector, tmp_path: Path, started: list[NodeProcess]
) -> None:
    node = NodeProcess(_env(mosquitto, tmp_path, []), tmp_path / "node").start()
    started.append(node)
    bus.wait(f"{T}/state", timeout=120)
    bad = {"id": "w0", "cmd": "set_watch", "rules": [{"name": "x", "classes": ["cat"], "min_confidence": "high"}]}
    bus.publish(f"{T}/control", json.dumps(bad))
    refused = Event.model_validate_json(bus.wait(f"{T}/events", answer_to("w0")).payload)
    assert not refused.ok and "min_confidence" in (refused.error or "")
    env = clean_env(EDGE_MQTT__HOST="127.0.0.1", EDGE_MQTT__PORT=str(mosquitto.port))
    zebra = json.dumps({"name": "zebra", "classes": ["no such label"]})
    out = run_cli("ctl", "node-w", "watch", json.dumps(CAT_RULE), zebra, "--timeout", "30", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node-w: ok set_watch rules=['cat', 'zebra'] paused=['zebra']"
    paused = bus.wait(f"{T}/events", lambda m: json.loads(m.payload)["cmd"] == "watch_paused")
    assert "zebra" in json.loads(paused.payload)["error"]
    state = NodeState.model_validate_json(
        bus.wait(f"{T}/state", lambda m: bool(json.loads(m.payload).get("watch", {}).get("rules"))).payload
    )
    assert state.watch is not None and list(state.watch.paused) == ["zebra"]
    _wait_detection(bus, node, "a start after set_watch", 60, event="start", rule="cat")
