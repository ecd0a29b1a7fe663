"""The node checks and chooses what serves on the device, end to end (a real process and broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_node.messages import Heartbeat, NodeState, Prediction
from tests.support.bundles import make_tiny_bundle
from tests.support.nodeproc import Collector, NodeProcess
from tests.support.reference_bundles import add_reference, replace_int8

pytestmark = pytest.mark.slow

T = "ghostpi/node-t"


def test_a_broken_int8_file_makes_the_node_serve_fp32_and_say_why(
    node_env: dict[str, str], tmp_path: Path, bus: Collector
) -> None:
    """INT8 files from other weights, with valid hashes: they load, run and look healthy; only the on-device
    reference check shows that they disagree with the model they claim to be."""
    bundle = replace_int8(add_reference(make_tiny_bundle(tmp_path / "b", precision="both")))
    node = NodeProcess(dict(node_env, EDGE_MODEL__BUNDLE=str(bundle)), tmp_path / "node").start()
    try:
        p = Prediction.model_validate_json(bus.wait(f"{T}/predictions", timeout=60).payload)
        assert p.model.precision == "fp32" and p.model.runtime == "onnxruntime"
        event = json.loads(
            bus.wait(f"{T}/events", lambda m: json.loads(m.payload)["cmd"] == "model_check_failed").payload
        )
        assert "fails its reference check" in event["error"] and event["detail"]["serving"] == "onnxruntime fp32"
        state = NodeState.model_validate_json(bus.wait(f"{T}/state").payload)
        assert state.device is not None and state.device.precision == "fp32" and state.device.note
        assert any(not c.passed for c in state.device.checks)
        hb = Heartbeat.model_validate_json(
            bus.wait(f"{T}/heartbeat", lambda m: json.loads(m.payload).get("model_check") is not None).payload
        )
        assert hb.precision == "fp32" and "int8" in (hb.model_check or "")
    finally:
        node.terminate()


def test_the_measured_choice_is_in_the_state_and_remembered_across_restarts(
    node_env: dict[str, str], tmp_path: Path, bus: Collector
) -> None:
    env = dict(node_env, EDGE_MODEL__THREADS="2", EDGE_MODEL__WORKERS="auto")
    node = NodeProcess(env, tmp_path / "node").start()
    try:
        state = NodeState.model_validate_json(
            bus.wait(f"{T}/state", lambda m: json.loads(m.payload).get("device") is not None, timeout=60).payload
        )
        assert state.device is not None and not state.device.cached
        assert {(t.workers, t.threads) for t in state.device.trials} == {(1, 2), (2, 1)}
        measured = state.device.trials
        hb = Heartbeat.model_validate_json(bus.wait(f"{T}/heartbeat", timeout=30).payload)
        assert len(hb.workers) == state.device.workers
    finally:
        node.terminate()
    again = NodeProcess(env, tmp_path / "node2").start()
    try:
        start = bus.messages[-1].at
        state = NodeState.model_validate_json(
            bus.wait(f"{T}/state", lambda m: json.loads(m.payload).get("device", {}).get("cached"), since=start).payload
        )
        # Nothing is measured the second time: the state shows the first start's trials, figure for figure.
        assert state.device is not None and state.device.trials == measured
    finally:
        again.terminate()
