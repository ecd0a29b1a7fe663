"""Home Assistant's event entity per watch rule: announced in the device discovery, fed by real detections."""

from __future__ import annotations

import json

import pytest

from edge_node.node.hass import discovery_message
from edge_node.wire import Detection
from tests.node.test_hass import COMPONENT_KEYS, PLATFORMS, ROOT_KEYS

jinja2 = pytest.importorskip("jinja2")


def _detection(rule: str, event: str) -> Detection:
    extra = {"ended": 3.5, "duration_s": 1.5, "mean_confidence": 0.8, "reason": "gap"} if event == "end" else {}
    return Detection.model_validate(
        {
            "node": "pi-01", "rule": rule, "event": event, "id": f"{rule}-2000", "ts": 4.0, "started": 2.0,
            "label": 'tabby "1"', "frames": 9, "peak_confidence": 0.9, "best_ts": 2.5, **extra,
        }
    )  # fmt: skip


def test_each_rule_is_an_event_entity_that_fires_on_its_own_detections() -> None:
    _, payload = discovery_message("ghostpi", "pi-01", sw_version="0.1.0", model_name="m", rules=["cat", "bird.feeder"])
    message = json.loads(payload)
    assert set(message) <= ROOT_KEYS
    cmps = message["cmps"]
    events = {cid: c for cid, c in cmps.items() if c["p"] == "event"}
    assert set(events) == {"watch_cat", "watch_bird_feeder"}
    for comp in events.values():
        assert set(comp) <= COMPONENT_KEYS and comp["p"] in PLATFORMS
        assert comp["stat_t"] == "ghostpi/pi-01/detections" and comp["evt_typ"] == ["start", "end"]
    assert len({c["uniq_id"] for c in cmps.values()}) == len(cmps)
    env = jinja2.Environment()
    render = {cid: env.from_string(c["val_tpl"]) for cid, c in events.items()}
    for event in ("start", "end"):
        det = _detection("cat", event)
        fired = json.loads(render["watch_cat"].render(value_json=json.loads(det.to_bytes())))
        assert fired["event_type"] == event and fired["id"] == "cat-2000" and fired["label"] == 'tabby "1"'
        assert fired["duration_s"] == (1.5 if event == "end" else None)
        # Another rule's detection renders empty: Home Assistant's MQTT event ignores an empty payload.
        assert render["watch_bird_feeder"].render(value_json=json.loads(det.to_bytes())).strip() == ""
