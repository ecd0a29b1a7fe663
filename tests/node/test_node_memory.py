"""RSS stays flat across mode switches and over-the-air swaps, with the real demo model.

Each switch or swap builds ONNX Runtime sessions and drops others. RSS used to climb by 30-130 MB over a few
dozen of them (glibc kept freed session memory in per-thread arenas; a new thread per build made new arenas).
bench/chaos.py runs the full 200 switches / 20 swaps; this runs fewer with the same bars. The node serves
ONNX Runtime with one worker of 2 threads, not whatever the device choice prefers today: an automatic choice
made this test measure a different configuration from one run to the next (the bar is < 200 MB with one
runtime loaded). Two workers hold two sessions and sit higher: docs/reliability.md has the figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from edge_node.ota.download import sha256_file
from tests.support.bundles import make_key, resigned
from tests.support.nodeproc import Collector, NodeProcess
from tests.support.ota_http import serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

T = "ghostpi/node-m"
GROWTH_MB = 25.0
CEILING_MB = 200.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from edge_node.modelzoo.demo import ensure_demo_bundle

    return ensure_demo_bundle(progress=False)


def _settle(node: NodeProcess) -> float:
    time.sleep(1.5)  # the dropped model's last frames finish; the builder gives its memory back
    return node.rss_mb()


def test_rss_stays_flat_across_mode_switches_and_swaps(demo: Path, node_env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "release.pem"
    pub = make_key(key)
    factory = resigned(demo, tmp_path / "factory", "m-1", key)
    site = tmp_path / "site"
    site.mkdir()
    update = pack(resigned(demo, tmp_path / "v2", "m-2", key), site / "m-2.tar.gz")
    env = dict(
        node_env,
        EDGE_NODE_ID="node-m",
        EDGE_MODEL__BUNDLE=str(factory),
        EDGE_MODEL__RUNTIME="onnxruntime",
        EDGE_MODEL__WORKERS="1",
        EDGE_MODEL__THREADS="2",
        EDGE_MQTT__CONTROL_RATE="100",
        EDGE_OTA__TRUSTED_KEYS=str(pub),
        EDGE_OTA__ALLOW_HTTP="true",
    )
    bus = Collector(int(env["EDGE_MQTT__PORT"]), (f"{T}/#",))
    with serving(site) as srv:
        node = NodeProcess(env, tmp_path / "node").start()
        try:
            bus.wait(f"{T}/predictions", timeout=120)

            def command(body: dict[str, object], timeout: float = 60) -> dict[str, object]:
                bus.publish(f"{T}/control", json.dumps(body))
                m = bus.wait(f"{T}/events", lambda m: json.loads(m.payload).get("id") == body["id"], timeout=timeout)
                return dict(json.loads(m.payload))

            switches = []
            for i in range(60):
                command({"id": f"m{i}", "cmd": "set_mode", "mode": "performance" if i % 2 == 0 else "high"})
                time.sleep(0.25)  # each switch builds a session in the background while frames keep flowing
                if i in (0, 59):
                    switches.append(_settle(node))
            swaps = []
            for i in range(6):
                body: dict[str, object] = {"id": f"s{i}", "cmd": "rollback"}
                if i % 2 == 0:
                    body = {"id": f"s{i}", "cmd": "update_model", "url": f"{srv.url}/{update.name}",
                            "sha256": sha256_file(update), "version": "m-2"}  # fmt: skip
                assert command(body, timeout=120)["ok"], node.log()[-3000:]
                swaps.append(_settle(node))
        finally:
            bus.close()
            node.terminate()
    print(f"RSS MB after mode switches 1 and 60: {switches}; after each swap: {swaps}")
    first, last = switches
    assert last - first < GROWTH_MB, f"RSS after the 1st and 60th mode switch: {switches}"
    assert max(swaps) - swaps[0] < GROWTH_MB, f"RSS after each swap: {swaps}"
    assert max(switches + swaps) < CEILING_MB, (switches, swaps)
