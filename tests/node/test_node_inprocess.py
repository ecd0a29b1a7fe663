"""A real ``Node`` driven in-process through the fake link (tests/support/fakelink.py): real camera thread, real
pipeline, real ONNX Runtime; only the broker is replaced. The process tests (test_node_process.py) cover the
same contract over a real mosquitto; these reach ``Node``, its builder and its wiring directly."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.bundle import Bundle, open_bundle
from edge_node.config import CameraConfig, HeartbeatConfig, ModelConfig, Settings
from edge_node.node import build
from edge_node.wire import Event, Heartbeat, NodeState, Prediction, Topics
from tests.support.fakelink import FakeLink, Sent

T = Topics("ghostpi", "node-t")


@pytest.fixture
def settings(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for key in [k for k in os.environ if k.upper().startswith("EDGE_")]:
        monkeypatch.delenv(key)
    yield Settings(
        _env_file=None,
        node_id="node-t",
        camera=CameraConfig(source="synthetic", fps=30),
        model=ModelConfig(bundle=tiny_bundle, threads=1),
        heartbeat=HeartbeatConfig(interval=1),
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def bundle(tiny_bundle: Path) -> Bundle:
    return open_bundle(tiny_bundle)


def _event(sent: Sent) -> Event:
    return Event.model_validate_json(sent.payload)


def test_a_node_in_process_publishes_and_answers_commands(settings: Settings, bundle: Bundle) -> None:
    async def scenario() -> None:
        link = FakeLink()
        node = await build(settings, bundle, link=link)
        run = asyncio.create_task(node.run())
        try:
            p = Prediction.model_validate_json((await link.wait(T.predictions)).payload)
            assert p.node == "node-t" and p.resolution == 224 and p.model.name == "tiny"
            state = await link.wait(T.state)
            assert state.retain and state.qos == 1 and NodeState.model_validate_json(state.payload).resolution == 224
            assert link.subscriptions == (T.control, Topics("ghostpi", "all").control)

            await link.deliver(T.control, json.dumps({"id": "m1", "cmd": "set_mode", "mode": "performance"}).encode())
            ack = _event(await link.wait(T.events, lambda s: _event(s).id == "m1"))
            assert ack.ok and ack.detail == {"mode": "performance", "resolution": 160}
            await link.wait(T.state, lambda s: NodeState.model_validate_json(s.payload).mode == "performance")

            # A retained command is refused, not run: the mode stays where it is.
            await link.deliver(
                T.control, json.dumps({"id": "r1", "cmd": "set_mode", "mode": "high"}).encode(), retained=True
            )
            refused = _event(await link.wait(T.events, lambda s: _event(s).id == "r1"))
            assert not refused.ok and "retained" in (refused.error or "")

            hb = Heartbeat.model_validate_json((await link.wait(T.heartbeat, since=len(link.sent))).payload)
            assert hb.node == "node-t" and hb.camera in ("starting", "ok") and hb.mode == "performance"
            assert node.publisher.published >= 1
        finally:
            node.stop()
            await asyncio.wait_for(run, 30)
        assert link.served  # the node left the link after its workers stopped ...
        sent = len(link.sent)
        await asyncio.sleep(0.3)
        assert len(link.sent) == sent  # ... so nothing more comes out of it

    asyncio.run(scenario())


def test_building_the_node_leaves_the_event_loop_free(settings: Settings, bundle: Bundle) -> None:
    """Regression: the device choice and the first sessions were built on the event loop (in ``Node()``, which
    ``edge-node run`` called there), freezing the embedded broker and everything else on the loop meanwhile."""

    # Every runtime, precision and worker split measured, as on a node's first start: long enough to tell.
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"threads": "auto"})})

    async def scenario() -> tuple[float, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await build(settings, bundle, link=FakeLink())
        took = time.monotonic() - start
        done.set()
        await ticker
        return took, max(gaps)

    took, worst = asyncio.run(scenario())
    assert took > 1.0, f"building took {took:.2f}s: too short for this test to tell a blocked loop from a free one"
    assert worst < took / 2, f"the loop stood still for {worst:.2f}s of a {took:.2f}s build"
