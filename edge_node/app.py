"""The composition root: builds the parts, runs them in one TaskGroup, and shuts them down cleanly.

Data paths (see docs/architecture.md):
  capture thread → latest-frame slot → inference thread → event loop → publish policy → MQTT
  MQTT control → router → handler → events/ and retained state/
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from edge_node import __version__
from edge_node.bundle import Bundle
from edge_node.capture.factory import make_source
from edge_node.capture.grabber import Grabber
from edge_node.config import Settings
from edge_node.errors import SnapshotError
from edge_node.messages import (
    Command,
    Event,
    Heartbeat,
    LatencyMs,
    NodeState,
    OtaStatus,
    Ping,
    Prediction,
    Rollback,
    SetMode,
    SetPublish,
    Snapshot,
    UpdateModel,
)
from edge_node.mqtt.connect import halt
from edge_node.mqtt.control import ControlRouter
from edge_node.mqtt.link import Link
from edge_node.ota.store import BundleStore
from edge_node.publish import PublishGate
from edge_node.sdnotify import Notifier, WatchdogGate, run_watchdog
from edge_node.snapshot import take_snapshot
from edge_node.telemetry import CpuMeter, cpu_temperature, rss_mb
from edge_node.topics import Topics
from edge_node.vision.classifier import Classification, Classifier
from edge_node.vision.modes import ModeController
from edge_node.vision.pipeline import Pipeline, Result

__all__ = ["Node"]

log = logging.getLogger(__name__)


class Node:
    """One running edge node. ``await Node(settings, bundle).run()`` until SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: Settings,
        bundle: Bundle,
        *,
        model_source: str = "active",
        on_prediction: Callable[[Prediction], None] | None = None,
        store: BundleStore | None = None,
    ) -> None:
        self.settings = settings
        self.model_source = model_source
        self.store = store
        self.topics = Topics(settings.topic_prefix, settings.node_id)
        self._on_prediction = on_prediction
        self.started = time.monotonic()
        self.cpu = CpuMeter()
        self.gate = PublishGate(settings.publish.policy, settings.publish.max_hz)
        self.router = ControlRouter(max_bytes=settings.mqtt.max_control_bytes, rate=settings.mqtt.control_rate)
        self.notifier = Notifier.from_env()
        # A pipeline that processed no frame for stall_timeout stops the pings: systemd restarts it.
        self.watchdog = WatchdogGate(timeout_s=settings.camera.stall_timeout)
        model = settings.model
        classifier = Classifier(bundle, precision=model.precision, threads=model.threads, top_k=model.top_k)
        controller = ModeController(settings.auto, classifier.resolutions, mode=settings.mode)
        # Sessions for other resolutions are built when a mode needs them (or up front, with model.sessions).
        classifier.warmup(
            resolutions=classifier.resolutions[: max(1, model.sessions)]
            if model.sessions > 1
            else [controller.resolution]
        )
        cam = settings.camera
        self.grabber = Grabber(lambda: make_source(cam), stall_timeout=cam.stall_timeout, reopen_delay=cam.reopen_delay)
        self.pipeline = Pipeline(
            self.grabber,
            classifier,
            controller,
            self._result_from_worker,
            fps_window=settings.auto.window,
            on_progress=self.watchdog.progress,
            keep_sessions=model.sessions,
        )
        self.pipeline.on_resolution_change = self._resolution_from_worker
        self.link = Link(
            settings.mqtt,
            self.topics,
            client_id=settings.mqtt.client_id or f"ghostpi-{settings.node_id}",
            subscriptions=self._subscriptions(),
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self.updater = self._make_updater()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._results: deque[Result] = deque(maxlen=64)  # bounded: a stalled loop drops, never hoards
        self._drain_scheduled = False
        self._ready = False
        self._last: Classification | None = None  # the label a snapshot is captioned with
        self._stop = asyncio.Event()
        self.published = 0

    # --- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.stop)
        self.grabber.start()
        self.pipeline.start()
        log.info(
            "node %s running: camera=%s model=%s %s (%s) mode=%s %dpx",
            self.settings.node_id,
            self.settings.camera.source,
            self.pipeline.classifier.model_ref().name,
            self.pipeline.classifier.model_ref().version,
            self.pipeline.classifier.precision,
            self.pipeline.mode.value,
            self.pipeline.resolution,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                link_task = tg.create_task(self.link.run(), name="mqtt")
                beat_task = tg.create_task(self._heartbeats(), name="heartbeat")
                dog_task = tg.create_task(run_watchdog(self.notifier, self.watchdog), name="watchdog")
                await self._stop.wait()
                self.notifier.stopping()
                # Stop producing first, so the link has nothing left to send but the offline status.
                await asyncio.to_thread(self._stop_workers)
                await self.link.close()
                for task in (beat_task, dog_task, link_task):
                    await halt(task)
        finally:
            self._stop_workers()
            self.notifier.close()
            log.info("node %s stopped", self.settings.node_id)

    def stop(self) -> None:
        log.info("shutting down")
        self._stop.set()

    def _stop_workers(self) -> None:
        self.pipeline.stop()
        self.grabber.stop()

    # --- worker → loop -----------------------------------------------------------------------------------

    def _result_from_worker(self, result: Result) -> None:
        """Hand a result to the loop, waking it only if it is not already due to drain (one wake-up per
        batch instead of one per frame: each costs a syscall and a GIL hand-over)."""
        self._results.append(result)
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_results)

    def _drain_results(self) -> None:
        self._drain_scheduled = False
        while self._results:
            self._publish_result(self._results.popleft())

    def _resolution_from_worker(self, resolution: int) -> None:
        del resolution
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._publish_state)

    def _publish_result(self, r: Result) -> None:
        c = self._last = r.classification
        if not self._ready:
            self._ready = True
            self.notifier.ready()
            log.info("first inference done: %s (%.2f) at %dpx", c.label, c.confidence, c.resolution)
        if not self.gate.allow(c.label, time.monotonic()):
            return
        msg = Prediction(
            node=self.settings.node_id,
            seq=r.seq,
            ts=round(r.ts, 3),
            label=c.label,
            class_id=c.class_id,
            confidence=c.confidence,
            top_k=c.top_k,
            fps=r.fps,
            latency_ms=LatencyMs(
                preprocess=round(c.preprocess_ms, 2),
                inference=round(c.inference_ms, 2),
                total=round(r.total_ms, 2),
            ),
            resolution=c.resolution,
            mode=r.mode,
            model=r.model,
        )
        if self.link.publish_fast(self.topics.predictions, msg.to_bytes()):
            self.published += 1
        if self._on_prediction is not None:
            self._on_prediction(msg)

    # --- MQTT side -----------------------------------------------------------------------------------------

    def _subscriptions(self) -> tuple[str, ...]:
        subs = self.topics.subscriptions
        if self.settings.ha.enabled:
            from edge_node.fleet.hass import ha_status_topic

            subs = (*subs, ha_status_topic(self.settings.ha.discovery_prefix))
        return subs

    async def _on_connect(self) -> None:
        self._publish_state()
        self._publish_discovery()
        if self.updater is not None:
            self.updater.republish()

    def _publish_discovery(self) -> None:
        if not self.settings.ha.enabled:
            return
        from edge_node.fleet.hass import discovery_message

        topic, payload = discovery_message(
            self.settings.topic_prefix,
            self.settings.node_id,
            discovery_prefix=self.settings.ha.discovery_prefix,
            sw_version=__version__,
            model_name=self.pipeline.classifier.model_ref().name,
        )
        self.link.publish(topic, payload, qos=1, retain=True)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic in self.topics.subscriptions:
            routed = self.router.route(payload, time.monotonic())
            if routed is None:
                log.warning("control message on %s dropped: rate limit exceeded", topic)
            elif isinstance(routed, Event):
                log.warning("rejected control message on %s: %s", topic, routed.error)
                self.emit(routed)
            else:
                await self._execute(routed)
            return
        if self.settings.ha.enabled:
            from edge_node.fleet.hass import rediscovery_delay

            delay = rediscovery_delay(payload)
            if delay is None:
                return
            log.info("Home Assistant came online: re-sending discovery in %.1fs", delay)
            assert self._loop is not None
            self._loop.call_later(delay, self._publish_discovery)

    async def _execute(self, cmd: Command) -> None:
        log.info("command %s (id=%s)", cmd.cmd, cmd.id)
        if isinstance(cmd, SetMode):
            resolution = self.pipeline.set_mode(cmd.mode)
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail={"mode": cmd.mode.value, "resolution": resolution}))
            self._publish_state()
        elif isinstance(cmd, Ping):
            self._publish_heartbeat()
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True))
        elif isinstance(cmd, SetPublish):
            self.gate.configure(cmd.policy, cmd.max_hz)
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail={"policy": cmd.policy.value}))
            self._publish_state()
        elif isinstance(cmd, UpdateModel | Rollback):
            if self.updater is None:
                self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error="over-the-air updates are not available"))
                return
            assert self._loop is not None
            self._loop.create_task(self.updater.handle(cmd))
        elif isinstance(cmd, Snapshot):
            await self._snapshot(cmd)

    async def _snapshot(self, cmd: Snapshot) -> None:
        """The latest frame as a small captioned JPEG on ``snapshot`` (edge_node/snapshot.py); off by default."""
        cfg, last = self.settings.snapshot, self._last
        frame = self.pipeline.latest_frame() if cfg.enabled else None
        label, confidence = (last.label, last.confidence) if last else (None, None)
        camera = self.grabber.state(time.monotonic())
        try:
            jpeg = await asyncio.to_thread(take_snapshot, cfg, frame, label, confidence, camera)
        except SnapshotError as exc:
            self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error=str(exc)))
            return
        self.link.publish(self.topics.snapshot, jpeg.data, qos=1)  # before the event: answered means sent
        self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail=jpeg.detail()))

    def emit(self, event: Event) -> None:
        self.link.publish(self.topics.events, event.to_bytes(), qos=1)

    def publish_ota(self, status: OtaStatus) -> None:
        self.link.publish(self.topics.ota, status.to_bytes(), qos=1, retain=True)

    def _publish_state(self) -> None:
        state = NodeState(
            node=self.settings.node_id,
            ts=round(time.time(), 3),
            mode=self.pipeline.mode,
            resolution=self.pipeline.resolution,
            model=self.pipeline.classifier.model_ref(),
            publish=self.gate.policy,
            publish_max_hz=self.gate.max_hz,
            version=__version__,
        )
        self.link.publish(self.topics.state, state.to_bytes(), qos=1, retain=True)

    def heartbeat(self) -> Heartbeat:
        now = time.monotonic()
        p = self.pipeline
        age = self.grabber.frame_age(now)
        return Heartbeat(
            node=self.settings.node_id,
            ts=round(time.time(), 3),
            uptime_s=round(now - self.started, 1),
            fps=round(p.fps.rate(now), 2),
            inference_ms_avg=round(p.inference_ms.value, 2),
            cpu_percent=self.cpu.percent(),
            cpu_temp_c=cpu_temperature(),
            rss_mb=rss_mb(),
            frames_captured=self.grabber.captured,
            frames_processed=p.processed,
            frames_dropped=self.grabber.slot.dropped,
            reconnects=self.link.reconnects,
            model_version=p.classifier.model_ref().version,
            model_source=self.updater.model_source if self.updater is not None else self.model_source,
            mode=p.mode,
            resolution=p.resolution,
            camera=self.grabber.state(now),
            camera_last_frame_age_s=None if age is None else round(age, 2),
        )

    def _publish_heartbeat(self) -> None:
        self.link.publish_fast(self.topics.heartbeat, self.heartbeat().to_bytes())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat.interval)
            hb = self.heartbeat()
            if hb.camera != "ok":
                log.warning("camera is %s (last frame %s s ago)", hb.camera, hb.camera_last_frame_age_s)
            self.link.publish_fast(self.topics.heartbeat, hb.to_bytes())

    # --- OTA -------------------------------------------------------------------------------------------

    def _make_updater(self) -> _UpdaterLike | None:
        """The OTA updater over the node's bundle store (see docs/ota.md); none without a store."""
        if self.store is None:
            return None
        from edge_node.ota.node import NodeSink
        from edge_node.ota.updater import Updater

        return Updater(
            self.settings.ota,
            self.store,
            self.pipeline,
            node_id=self.settings.node_id,
            model_cfg=self.settings.model,
            sink=NodeSink(self.emit, self.publish_ota),
        )


class _UpdaterLike(Protocol):
    """What the node needs from the OTA updater (edge_node.ota.updater.Updater)."""

    async def handle(self, cmd: UpdateModel | Rollback) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def republish(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def model_source(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError
