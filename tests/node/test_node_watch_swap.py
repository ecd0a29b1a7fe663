"""A watch rule's detection through a set_mode storm and an OTA swap, on the live node of the OTA tests (real
pipeline and ORT sessions, 30 fps synthetic camera, a real loopback HTTP server for the bundle)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from edge_node.config import OtaConfig
from edge_node.ota.download import sha256_file
from edge_node.wire import Detection, Event, Mode, Rollback, UpdateModel, WatchRule
from tests.support.bundles import make_keys, make_tiny_bundle
from tests.support.ota_harness import LiveNode, live_node
from tests.support.ota_http import FaultServer, serving

pytestmark = pytest.mark.timeout(120)

RES = (64, 48)
ALL = WatchRule(name="any", classes=[f"class_{i:03d}" for i in range(12)], min_confidence=0.0, gap_s=30.0)
NEW = WatchRule(name="new", classes=["class_011"])  # only the 12-class bundle has it


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, FaultServer]]:
    root = tmp_path / "site"
    root.mkdir()
    with serving(root) as srv:
        yield root, srv


def _detections(node: LiveNode) -> list[Detection]:
    topic = node.node.outbox.topics.detections
    return [Detection.model_validate_json(s.payload) for s in node.link.sent if s.topic == topic]


def _events(node: LiveNode, cmd: str) -> list[Event]:
    topic = node.node.outbox.topics.events
    evs = [Event.model_validate_json(s.payload) for s in node.link.sent if s.topic == topic]
    return [e for e in evs if e.cmd == cmd]


def test_a_mode_storm_and_an_ota_swap_neither_end_nor_double_a_detection(
    tmp_path: Path, site: tuple[Path, FaultServer]
) -> None:
    asyncio.run(_storm_and_swap(tmp_path, site))


async def _storm_and_swap(tmp_path: Path, site: tuple[Path, FaultServer]) -> None:
    private, public, _ = make_keys(tmp_path / "keys")
    factory = make_tiny_bundle(tmp_path / "factory", version="1.0.0", resolutions=RES, key=private)
    b2 = make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=private, num_classes=12)
    root, srv = site
    archive = pack(b2, root / "b2.tar.gz")
    cfg = OtaConfig(trusted_keys=[public], allow_http=True, health_frames=8, health_timeout=20.0)
    async with live_node(tmp_path / "ota", factory, cfg) as node:
        node.node.watcher.set_rules([ALL, NEW])
        assert _events(node, "watch_paused")[-1].detail == {"rule": "new"}  # 1.0.0 has no class_011
        await node.predictions_on("1.0.0", 5)
        (start,) = _detections(node)
        assert (start.rule, start.event) == ("any", "start")
        modes = [Mode.PERFORMANCE, Mode.HIGH, Mode.BALANCED, Mode.AUTO]
        for i in range(40):  # the storm: a switch every few ms, frames keep coming at one resolution or another
            node.pipeline.set_mode(modes[i % len(modes)])
            node.node.serving_changed()  # what the pipeline's on_change does after each step
            await asyncio.sleep(0.005)
        cmd = UpdateModel(
            cmd="update_model", id=uuid.uuid4().hex[:8], url=f"{srv.url}/b2.tar.gz", sha256=sha256_file(archive),
            version="2.0.0",
        )  # fmt: skip
        await node.updater.handle(cmd)
        await node.predictions_on("2.0.0", 10)
        node.node.serving_changed()
        assert [e.detail for e in _events(node, "watch_resumed")] == [{"rule": "new"}]
        assert [(d.rule, d.event) for d in _detections(node) if d.rule == "any"] == [("any", "start")]
        # Back to 1.0.0: "new" pauses again and an open detection of it ends, saying why.
        await node.updater.handle(Rollback(cmd="rollback", id="rb"))
        await node.predictions_on("1.0.0", 5)
        node.node.serving_changed()
        assert _events(node, "watch_paused")[-1].detail == {"rule": "new"}
        mine = [d for d in _detections(node) if d.rule == "new"]
        assert [d.event for d in mine] in ([], ["start", "end"]) and all(
            d.reason == "paused" for d in mine if d.event == "end"
        )
    said = [d for d in _detections(node) if d.rule == "any"]
    assert [(d.event, d.id) for d in said] == [("start", start.id), ("end", start.id)]
    # every frame counts for "any": at least the 5 + 10 + 5 predictions awaited above (a loaded CI makes no more)
    assert said[1].reason == "shutdown" and said[1].frames >= 20
