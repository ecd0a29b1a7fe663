"""Home Assistant MQTT device discovery for one node (off by default: ``EDGE_HA__ENABLED``).

One retained message on ``<discovery_prefix>/device/<object_id>/config`` declares the whole device:
sensors fed by the node's own ``predictions`` and ``heartbeat`` JSON, an ``event`` entity per watch rule fed by
``detections`` (docs/detections.md), a ``select`` whose option goes, as a
bare mode name, to the node's Home Assistant mode topic (``ghostpi/<node>/ha/mode``: never the control topic,
so Home Assistant's identity needs no right to send commands, docs/security.md), and availability from
``status``. The node publishes it after connecting and again, after a random delay, whenever HA announces
``online`` on :data:`HA_STATUS_TOPIC` (so a restarted HA rediscovers a large fleet without a thundering herd).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence

from edge_node.wire import OFFLINE, ONLINE, Mode, Topics

__all__ = [
    "HA_ONLINE",
    "HA_STATUS_TOPIC",
    "ORIGIN_NAME",
    "detection_template",
    "discovery_message",
    "discovery_topic",
    "ha_status_topic",
    "object_id",
    "rediscovery_delay",
]

HA_STATUS_TOPIC = "homeassistant/status"  # HA's birth/last-will topic (with the default discovery prefix)
HA_ONLINE = b"online"
ORIGIN_NAME = "ghostpi-edge-node"

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def object_id(node_id: str) -> str:
    """HA only accepts ``[a-zA-Z0-9_-]`` in discovery topic levels; node ids may also hold '.'."""
    return "ghostpi_" + _UNSAFE.sub("_", node_id)


def ha_status_topic(discovery_prefix: str = "homeassistant") -> str:
    """HA publishes its birth (``online``) and will (``offline``) under its discovery prefix."""
    return f"{discovery_prefix}/status"


def discovery_topic(node_id: str, discovery_prefix: str = "homeassistant") -> str:
    return f"{discovery_prefix}/device/{object_id(node_id)}/config"


def _sensor(uid: str, name: str, topic: str, template: str, **extra: object) -> dict[str, object]:
    return {"p": "sensor", "name": name, "uniq_id": uid, "stat_t": topic, "val_tpl": template, **extra}


def detection_template(rule: str) -> str:
    """The event entity's value template: this rule's detections become ``{"event_type": "start"|"end", ...}``;
    other rules' render empty, which Home Assistant's MQTT event ignores (one topic carries every rule)."""
    fields = ", ".join(
        f'"{key}": {{{{ value_json.{key} | default(None) | tojson }}}}'
        for key in ("id", "label", "peak_confidence", "started", "duration_s", "reason")
    )
    return (
        f"{{% if value_json.rule == {json.dumps(rule)} %}}"
        f'{{"event_type": {{{{ value_json.event | tojson }}}}, {fields}}}'
        "{% endif %}"
    )


def _watch(topics: Topics, base: str, rules: Sequence[str]) -> dict[str, dict[str, object]]:
    return {
        f"watch_{_UNSAFE.sub('_', rule)}": {
            "p": "event",
            "name": f"Watch {rule}",
            "uniq_id": f"{base}_watch_{_UNSAFE.sub('_', rule)}",
            "stat_t": topics.detections,
            "evt_typ": ["start", "end"],
            "val_tpl": detection_template(rule),
            "ic": "mdi:eye-outline",
        }
        for rule in rules
    }


def _components(topics: Topics, base: str) -> dict[str, dict[str, object]]:
    diagnostic = {"ent_cat": "diagnostic", "stat_cla": "measurement"}
    return {
        "label": _sensor(f"{base}_label", "Label", topics.predictions, "{{ value_json.label }}", ic="mdi:image-search"),
        "confidence": _sensor(
            f"{base}_confidence",
            "Confidence",
            topics.predictions,
            "{{ (value_json.confidence * 100) | round(1) }}",
            unit_of_meas="%",
            stat_cla="measurement",
        ),
        "fps": _sensor(
            f"{base}_fps",
            "FPS",
            topics.heartbeat,
            "{{ value_json.fps | round(1) }}",
            unit_of_meas="fps",
            **diagnostic,
        ),
        "inference_ms": _sensor(
            f"{base}_inference_ms",
            "Inference time",
            topics.heartbeat,
            "{{ value_json.inference_ms_avg | round(1) }}",
            unit_of_meas="ms",
            dev_cla="duration",
            **diagnostic,
        ),
        "cpu_temp": _sensor(
            f"{base}_cpu_temp",
            "CPU temperature",
            topics.heartbeat,
            # absent on machines without a thermal zone: "None" makes HA show 'unknown'
            "{{ value_json.cpu_temp_c | default(None) }}",
            unit_of_meas="°C",
            dev_cla="temperature",
            **diagnostic,
        ),
        "mode": {
            "p": "select",
            "name": "Resolution mode",
            "uniq_id": f"{base}_mode",
            "ops": [mode.value for mode in Mode],
            "stat_t": topics.state,
            "val_tpl": "{{ value_json.mode }}",
            "cmd_t": topics.ha_mode,  # HA publishes the chosen option as it is: no command template
            "ent_cat": "config",
            "ic": "mdi:tune-variant",
        },
    }


def discovery_message(
    prefix: str,
    node_id: str,
    *,
    discovery_prefix: str = "homeassistant",
    sw_version: str,
    model_name: str,
    rules: Sequence[str] = (),
) -> tuple[str, bytes]:
    """(topic, payload) of the device discovery message for ``node_id`` under topic prefix ``prefix``, with an
    event entity for each watch rule in ``rules``."""
    topics = Topics(prefix, node_id)
    base = object_id(node_id)
    payload = {
        "dev": {
            "ids": [base],
            "name": f"GhostPi {node_id}",
            "mf": "GhostPi",
            "mdl": model_name,
            "sw": sw_version,
        },
        "o": {"name": ORIGIN_NAME, "sw": sw_version},
        "avty": [{"t": topics.status, "pl_avail": ONLINE.decode(), "pl_not_avail": OFFLINE.decode()}],
        "qos": 1,
        "cmps": _components(topics, base) | _watch(topics, base, rules),
    }
    return discovery_topic(node_id, discovery_prefix), json.dumps(payload, separators=(",", ":")).encode()


def rediscovery_delay(payload: bytes, *, max_delay: float = 10.0, rng: random.Random | None = None) -> float | None:
    """Seconds to wait before re-sending discovery after a message on HA's status topic; None to ignore it.

    The random spread keeps a fleet of hundreds of nodes from answering HA's birth message all at once.
    """
    if payload.strip().lower() != HA_ONLINE:
        return None
    return (rng or random).uniform(0.0, max_delay)
