"""A live node without MQTT for OTA tests and benches: real synthetic camera at 30 fps, real Pipeline,
real ORT sessions, a real BundleStore and Updater, and a sink that records what would be published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.capture.factory import make_source
from edge_node.capture.grabber import Grabber
from edge_node.config import AutoModeConfig, CameraConfig, ModelConfig, OtaConfig
from edge_node.domain import Mode
from edge_node.messages import Event, OtaStatus
from edge_node.ota.store import BundleStore
from edge_node.ota.updater import Updater
from edge_node.vision.loading import load, select_model
from edge_node.vision.modes import ModeController
from edge_node.vision.pipeline import Output, Pipeline, Result

__all__ = ["LiveNode", "RecordingSink", "live_node"]


@dataclass
class RecordingSink:
    events: list[Event] = field(default_factory=list)
    statuses: list[OtaStatus] = field(default_factory=list)
    on_event: Callable[[Event], None] | None = None  # a test's reaction to each event, after it is recorded

    def event(self, ev: Event) -> None:
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    def ota(self, st: OtaStatus) -> None:
        self.statuses.append(st)

    def phases(self) -> list[str]:
        return [s.phase for s in self.statuses]


@dataclass
class LiveNode:
    pipeline: Pipeline
    grabber: Grabber
    store: BundleStore
    updater: Updater
    sink: RecordingSink
    results: list[tuple[float, str]]  # (monotonic time, model version) of every prediction
    arrived: asyncio.Event  # set by each prediction
    seqs: list[int] = field(default_factory=list)  # the frame number of every prediction, in arrival order
    resolutions: list[int] = field(default_factory=list)

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
    """Start camera + inference on the store's start-up bundle; stop everything on exit."""
    model = model or ModelConfig(threads=1)
    store = BundleStore(state, factory)
    bundle, _ = store.startup()
    chosen, _ = select_model(bundle, model, resolution=224)
    cam = CameraConfig(source="synthetic", width=320, height=240, fps=fps)
    grabber = Grabber(lambda: make_source(cam), stall_timeout=5.0, reopen_delay=0.5)
    controller = ModeController(AutoModeConfig(), chosen.resolutions, mode=Mode.HIGH, workers=chosen.workers)
    results: list[tuple[float, str]] = []
    seqs: list[int] = []
    resolutions: list[int] = []
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()
    updater: Updater | None = None

    class Listener:
        def on_output(self, item: Output) -> None:  # inference thread
            if isinstance(item, Result):
                results.append((time.monotonic(), item.model.version))
                seqs.append(item.seq)
                resolutions.append(item.classification.resolution)
            loop.call_soon_threadsafe(delivered, item)

        def on_change(self) -> None:
            pass

    def delivered(item: Output) -> None:
        arrived.set()
        if updater is not None:
            updater.observe(item)

    loaded = load(chosen, check=chosen.resolutions, keep=model.sessions)
    pipeline = Pipeline(grabber.slot, loaded, controller, Listener(), keep=model.sessions)
    sink = RecordingSink()
    updater = Updater(cfg, store, pipeline, node_id="n1", model_cfg=model, sink=sink, backoff=0.01)
    grabber.start()
    pipeline.start()
    node = LiveNode(pipeline, grabber, store, updater, sink, results, arrived, seqs, resolutions)
    try:
        await node.predictions_on(bundle.manifest.version, 2)
        yield node
    finally:
        await updater.aclose()
        pipeline.stop()
        grabber.stop()
