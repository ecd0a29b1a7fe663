"""The outbox sends each kind of message with the topic, QoS and retain flag that docs/mqtt-api.md promises."""

from __future__ import annotations

import re
from typing import Any, cast

from edge_node.node.outbox import Outbox
from edge_node.wire import Topics
from tests.support.fakelink import FakeLink
from tests.support.paths import REPO

T = Topics("ghostpi", "n1")


class _Payload:
    """Any wire message: the outbox only asks it for its bytes."""

    def to_bytes(self) -> bytes:
        return b"{}"


def _documented() -> dict[str, tuple[int, bool]]:
    """``leaf -> (QoS, retained)`` for what the node sends, from the table at the top of docs/mqtt-api.md."""
    table = (REPO / "docs" / "mqtt-api.md").read_text()
    rows = re.findall(r"^\| `([a-z/]+)` \| node → \| (\d) \| (yes|no) \|", table, flags=re.MULTILINE)
    return {leaf: (int(qos), retained == "yes") for leaf, qos, retained in rows}


def test_each_kind_leaves_as_the_mqtt_api_documents_it() -> None:
    link = FakeLink()
    outbox = Outbox(link, T)
    msg = cast(Any, _Payload())
    assert outbox.prediction(b"{}") and outbox.heartbeat(msg)
    outbox.state(msg)
    outbox.event(msg)
    outbox.ota(msg)
    outbox.snapshot(b"\xff\xd8jpeg")
    outbox.detection(msg)
    sent = {s.topic.rsplit("/", 1)[-1]: (s.qos, s.retain) for s in link.sent}
    documented = _documented()
    documented.pop("status")  # the link's own: online on connect, offline as the will and on a clean exit
    assert sent == documented


def test_discovery_is_retained_under_home_assistants_prefix_and_qos0_is_dropped_offline() -> None:
    link = FakeLink(connected=False)
    outbox = Outbox(link, T)
    outbox.discovery("homeassistant/select/n1/mode/config", b"{}")
    assert [(s.topic, s.qos, s.retain) for s in link.sent] == [("homeassistant/select/n1/mode/config", 1, True)]
    assert not outbox.prediction(b"{}")
    assert link.dropped_offline == {"predictions": 1}
