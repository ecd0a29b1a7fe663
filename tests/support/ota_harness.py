"""A live node for OTA tests and benches: the real ``Node`` (node/builder.py builds it, as ``edge-node run``
does) on a synthetic camera at 30 fps, real ORT sessions, a real BundleStore and Updater, and the in-process
fake link (tests/support/fakelink.py) in place of the broker. ``sink`` reads what the updater published through it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.capture.grabber import Grabber
from edge_node.config import CameraConfig, ModelConfig, OtaConfig, Settings
from edge_node.node import Node, build
from edge_node.ota.store import BundleStore
from edge_node.ota.updater import Updater
from edge_node.vision.pipeline import Pipeline
from edge_node.wire import Event, OtaStatus, Prediction, Topics
from tests.support.fakelink import FakeLink, Sent

__all__ = ["LiveNode", "RecordingSink", "live_node"]

# What the updater reports on events/ (the node's supervisor and its other parts report there too).
OTA_EVENTS = frozenset({"update_model", "rollback", "model_fallback"})


@dataclass
class RecordingSink:
    """The updater's events and retained OTA statuses, as they left through the link."""

    events: list[Event] = field(default_factory=list)
    statuses: list[OtaStatus] = field(default_factory=list)
    on_event: Callable[[Event], None] | None = None  # a test's reaction to each event, after it is recorded

    def sent(self, topics: Topics, item: Sent) -> None:
        if item.topic == topics.ota:
            self.statuses.append(OtaStatus.model_validate_json(item.payload))
        elif item.topic == topics.events:
            ev = Event.model_validate_json(item.payload)
            if ev.cmd in OTA_EVENTS:
                self.events.append(ev)
                if self.on_event is not None:
                    self.on_event(ev)

    def phases(self) -> list[str]:
        return [s.phase for s in self.statuses]


class _RecordingLink(FakeLink):
    def __init__(self, topics: Topics, sink: RecordingSink) -> None:
        super().__init__()
        self._topics, self._sink = topics, sink

    def _record(self, item: Sent) -> None:
        super()._record(item)
        self._sink.sent(self._topics, item)


@dataclass
class LiveNode:
    node: Node
    link: FakeLink
    store: BundleStore
    sink: RecordingSink
    results: list[tuple[float, str]]  # (monotonic time the pipeline emitted it, model version) of each prediction
    arrived: asyncio.Event  # set by each prediction
    seqs: list[int] = field(default_factory=list)  # the frame number of every prediction, in arrival order
    resolutions: list[int] = field(default_factory=list)

    @property
    def pipeline(self) -> Pipeline:
        return self.node.pipeline

    @property
    def grabber(self) -> Grabber:
        return self.node.grabber

    @property
    def updater(self) -> Updater:
        assert self.node.updater is not None
        return self.node.updater

    @property
    def serving(self) -> str:
        return self.pipeline.model.info.version

    async def predictions_on(self, version: str, count: int = 3) -> None:
        """Wait (up to 10 s) until ``count`` new predictions come from ``version``."""
        start = len(self.results)
        try:
            async with asyncio.timeout(10.0):
                while sum(1 for _, v in self.results[start:] if v == version) < count:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            seen = {v for _, v in self.results[start:]}
            raise AssertionError(f"no {count} predictions from {version} in 10s; saw {seen}") from None


@asynccontextmanager
async def live_node(
    state: Path,
    factory: Path,
    cfg: OtaConfig,
    *,
    fps: float = 30.0,
    model: ModelConfig | None = None,
) -> AsyncIterator[LiveNode]:
    """Start the node on the store's start-up bundle; stop it on exit. ``sink`` starts empty once it serves."""
    settings = Settings(
        _env_file=None,
        node_id="n1",
        camera=CameraConfig(source="synthetic", width=320, height=240, fps=fps),
        model=model or ModelConfig(threads=1),
        ota=cfg,
        state_dir=state.with_name(f"{state.name}-node"),  # the device choice; the store keeps ``state`` to itself
    )
    topics = Topics(settings.topic_prefix, settings.node_id)
    store = BundleStore(state, factory)
    bundle, source = store.startup()
    sink = RecordingSink()
    results: list[tuple[float, str]] = []
    seqs: list[int] = []
    resolutions: list[int] = []
    arrived = asyncio.Event()

    def predicted(p: Prediction) -> None:  # on the loop, for every result (the policy is "every")
        emitted = time.monotonic() - (time.time() - p.ts)  # the pipeline's emission time, on the monotonic clock
        results.append((emitted, p.model.version))
        seqs.append(p.seq)
        resolutions.append(p.resolution)
        arrived.set()

    link = _RecordingLink(topics, sink)
    node = await build(settings, bundle, model_source=source, store=store, on_prediction=predicted, link=link)
    assert node.updater is not None
    node.updater.backoff = 0.01  # retries at once: the tests' faults are deterministic
    running = asyncio.create_task(node.run())
    live = LiveNode(node, link, store, sink, results, arrived, seqs, resolutions)
    try:
        await live.predictions_on(bundle.manifest.version, 2)
        sink.events.clear()  # what start-up said (the retained status on connect) is not the tests' business
        sink.statuses.clear()
        yield live
    finally:
        node.stop()
        await running
