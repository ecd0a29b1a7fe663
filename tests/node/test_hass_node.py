"""End to end: a real node announces itself to Home Assistant, and HA's mode select really switches resolution."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.homeassistant import select_command
from tests.support.nodeproc import Collector, NodeProcess

jinja2 = pytest.importorskip("jinja2")

DISCOVERY = "homeassistant/device/ghostpi_node-t/config"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ha_select_switches_the_node_resolution(node_env: dict[str, str], tmp_path: Path) -> None:
    port = int(node_env["EDGE_MQTT__PORT"])
    watch = Collector(port, ("homeassistant/#", "ghostpi/node-t/#"))
    node = NodeProcess({**node_env, "EDGE_HA__ENABLED": "true"}, tmp_path / "node").start()
    try:
        config = watch.wait(DISCOVERY, timeout=60).json()
        assert config["avty"][0]["t"] == "ghostpi/node-t/status"
        select = config["cmps"]["mode"]
        assert select["p"] == "select" and "performance" in select["ops"]
        first = watch.wait("ghostpi/node-t/predictions", timeout=30).json()
        assert first["resolution"] == 224

        # Refused or ignored, on a broker without an ACL: a command on the node's mode topic (an error event), a
        # mode on a fleet-wide mode topic (the node never subscribes to one).
        sent = time.monotonic()
        watch.publish("ghostpi/node-t/ha/mode", '{"cmd": "rollback"}')
        watch.publish("ghostpi/all/ha/mode", "balanced")
        # what HA does when a user picks "performance" in the select
        watch.publish(*select_command(select, "performance"))
        event = watch.wait("ghostpi/node-t/events", lambda m: m.json()["cmd"] == "set_mode", since=sent).json()
        assert event["ok"] and event["detail"] == {"mode": "performance", "resolution": 160}
        # The node handles its messages in order: by its answer to the select, it has answered all that came first.
        answers = [m.json() for m in watch.on("ghostpi/node-t/events", since=sent)]
        assert [(e["cmd"], e["ok"]) for e in answers] == [("rollback", False), ("set_mode", True)], answers
        assert "only a mode name" in answers[0]["error"]
        switched = watch.wait("ghostpi/node-t/predictions", lambda m: m.json()["resolution"] == 160, since=sent)
        assert switched.json()["mode"] == "performance"
        # HA's select reads its state back from the retained state topic through its value template
        state = watch.wait(select["stat_t"], lambda m: m.json()["mode"] == "performance", since=sent)
        assert jinja2.Environment().from_string(select["val_tpl"]).render(value_json=state.json()) == "performance"

        # HA restarts: its birth message makes the node re-send discovery (after a random delay <= 10 s)
        birth = time.monotonic()
        watch.publish("homeassistant/status", "online")
        again = watch.wait(DISCOVERY, since=birth, timeout=15)
        assert json.loads(again.payload) == config
    finally:
        watch.close()
        node.terminate()
