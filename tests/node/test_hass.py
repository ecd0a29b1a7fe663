"""HA device discovery: the payload HA's schema needs, and templates that work on real messages."""

from __future__ import annotations

import json
import random

import pytest

from edge_node.node.hass import (
    HA_STATUS_TOPIC,
    discovery_message,
    discovery_topic,
    ha_status_topic,
    rediscovery_delay,
)
from edge_node.wire import (
    ClassScore,
    Heartbeat,
    LatencyMs,
    Mode,
    ModelRef,
    NodeState,
    Prediction,
    PublishPolicy,
    SetMode,
    Topics,
    parse_mode_select,
)
from tests.support.homeassistant import select_command

jinja2 = pytest.importorskip("jinja2")

# The abbreviations HA's MQTT discovery expands (homeassistant/components/mqtt/abbreviations.py), limited to
# the ones a device discovery message may use here; an unknown key would be rejected by HA's schema.
ROOT_KEYS = {"dev", "o", "cmps", "avty", "qos", "stat_t", "cmd_t", "e"}
DEVICE_KEYS = {"ids", "cns", "name", "mf", "mdl", "mdl_id", "sw", "hw", "sn", "sa", "cu", "via_device"}
ORIGIN_KEYS = {"name", "sw", "url"}
AVAILABILITY_KEYS = {"t", "pl_avail", "pl_not_avail", "val_tpl"}
COMPONENT_KEYS = {
    "p",
    "name",
    "uniq_id",
    "stat_t",
    "val_tpl",
    "unit_of_meas",
    "dev_cla",
    "stat_cla",
    "ent_cat",
    "ic",
    "ops",
    "cmd_t",
    "cmd_tpl",
    "exp_aft",
    "en",
    "json_attr_t",
    "json_attr_tpl",
    "qos",
    "evt_typ",
}
PLATFORMS = {"sensor", "select", "binary_sensor", "button", "number", "switch", "text", "event"}

MODEL = ModelRef(name="mobilenetv3", version="1.2.0", precision="int8")


def _prediction() -> Prediction:
    top = [
        ClassScore(label="tabby", class_id=281, confidence=0.8734),
        ClassScore(label="tiger cat", class_id=282, confidence=0.1),
    ]
    return Prediction(
        node="pi-01",
        seq=7,
        ts=1.7e9,
        label="tabby",
        class_id=281,
        confidence=0.8734,
        top_k=top,
        fps=14.2,
        latency_ms=LatencyMs(preprocess=1.0, inference=23.456, total=25.0),
        resolution=224,
        mode=Mode.HIGH,
        model=MODEL,
    )


def _heartbeat(temp: float | None) -> Heartbeat:
    return Heartbeat(
        node="pi-01",
        ts=1.7e9,
        uptime_s=12.0,
        fps=14.26,
        inference_ms_avg=23.456,
        cpu_percent=50.0,
        cpu_temp_c=temp,
        rss_mb=120.0,
        frames_captured=100,
        frames_processed=98,
        frames_dropped=2,
        reconnects=0,
        model_version="1.2.0",
        mode=Mode.HIGH,
        resolution=224,
        camera="ok",
    )


def _state(mode: Mode) -> NodeState:
    return NodeState(
        node="pi-01",
        ts=1.7e9,
        mode=mode,
        resolution=160,
        model=MODEL,
        publish=PublishPolicy.EVERY,
        publish_max_hz=2.0,
        version="0.1.0",
    )


def _render(template: str, payload: bytes | None = None, value: str | None = None) -> str:
    env = jinja2.Environment()
    context: dict[str, object] = {}
    if payload is not None:
        context["value"] = payload.decode()
        context["value_json"] = json.loads(payload)
    if value is not None:
        context["value"] = value
    return str(env.from_string(template).render(**context))


@pytest.fixture
def message() -> dict[str, object]:
    topic, payload = discovery_message("ghostpi", "pi-01", sw_version="0.1.0", model_name="mobilenetv3 int8")
    assert topic == "homeassistant/device/ghostpi_pi-01/config"
    data = json.loads(payload)
    assert isinstance(data, dict)
    return data


def test_device_discovery_schema(message: dict[str, object]) -> None:
    assert set(message) <= ROOT_KEYS
    dev, origin, cmps = message["dev"], message["o"], message["cmps"]
    assert isinstance(dev, dict) and isinstance(origin, dict) and isinstance(cmps, dict)
    assert set(dev) <= DEVICE_KEYS and dev["ids"] == ["ghostpi_pi-01"] and dev["sw"] == "0.1.0"
    assert set(origin) <= ORIGIN_KEYS and origin["name"]  # HA requires an origin name
    avty = message["avty"]
    assert isinstance(avty, list) and len(avty) == 1 and set(avty[0]) <= AVAILABILITY_KEYS
    assert avty[0] == {"t": "ghostpi/pi-01/status", "pl_avail": "online", "pl_not_avail": "offline"}
    assert set(cmps) == {"label", "confidence", "fps", "inference_ms", "cpu_temp", "mode"}
    unique_ids = set()
    for cid, comp in cmps.items():
        assert set(comp) <= COMPONENT_KEYS, (cid, set(comp) - COMPONENT_KEYS)
        assert comp["p"] in PLATFORMS  # platform is required per component
        assert comp["uniq_id"].startswith("ghostpi_pi-01_")
        unique_ids.add(comp["uniq_id"])
        assert comp["stat_t"].startswith("ghostpi/pi-01/")
    assert len(unique_ids) == len(cmps)


def test_sensor_templates_read_real_messages(message: dict[str, object]) -> None:
    cmps = message["cmps"]
    assert isinstance(cmps, dict)
    by_topic = {
        "ghostpi/pi-01/predictions": _prediction().to_bytes(),
        "ghostpi/pi-01/heartbeat": _heartbeat(61.5).to_bytes(),
        "ghostpi/pi-01/state": _state(Mode.BALANCED).to_bytes(),
    }
    values = {cid: _render(c["val_tpl"], by_topic[c["stat_t"]]) for cid, c in cmps.items()}
    assert values == {
        "label": "tabby",
        "confidence": "87.3",
        "fps": "14.3",
        "inference_ms": "23.5",
        "cpu_temp": "61.5",
        "mode": "balanced",
    }
    # the node omits cpu_temp_c where there is no thermal zone; HA turns "None" into 'unknown'
    assert _render(cmps["cpu_temp"]["val_tpl"], _heartbeat(None).to_bytes()) == "None"


def test_the_select_sends_a_bare_mode_to_the_nodes_own_mode_topic(message: dict[str, object]) -> None:
    """Never a command to a control topic (docs/security.md): HA's identity may not write those."""
    cmps = message["cmps"]
    assert isinstance(cmps, dict)
    select = cmps["mode"]
    assert select["cmd_t"] == "ghostpi/pi-01/ha/mode" == Topics("ghostpi", "pi-01").ha_mode
    assert "cmd_tpl" not in select
    assert select["ops"] == ["high", "balanced", "performance", "auto"]
    for option in select["ops"]:
        topic, payload = select_command(select, option)
        command = parse_mode_select(payload)
        assert topic == select["cmd_t"] and command == SetMode(cmd="set_mode", mode=Mode(option))


def test_unsafe_node_ids_and_custom_prefix() -> None:
    topic, payload = discovery_message("fleet/a", "cam.kitchen", discovery_prefix="ha", sw_version="1", model_name="m")
    assert topic == "ha/device/ghostpi_cam_kitchen/config" == discovery_topic("cam.kitchen", "ha")
    data = json.loads(payload)
    assert data["cmps"]["label"]["stat_t"] == "fleet/a/cam.kitchen/predictions"
    assert HA_STATUS_TOPIC == ha_status_topic() == "homeassistant/status"
    assert ha_status_topic("ha") == "ha/status"


def test_rediscovery_after_ha_birth_is_randomly_delayed() -> None:
    rng = random.Random(1)
    delays = [rediscovery_delay(b"online", max_delay=5.0, rng=rng) for _ in range(50)]
    assert all(d is not None and 0.0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) == 50  # spread, not one instant for the whole fleet
    assert rediscovery_delay(b"offline") is None
    assert rediscovery_delay(b"") is None
