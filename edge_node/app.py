"""The composition root: builds the parts, runs them in one TaskGroup, and shuts them down cleanly.

Data paths (see docs/architecture.md):
  capture thread → frame slot → preprocess thread → inference workers → handoff → event loop → MQTT
  MQTT control → router → command handler → events/ and retained state/
  snapshots of camera and pipeline → supervisor → events, restarts, systemd watchdog
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from edge_node import memory
from edge_node.bundle import Bundle
from edge_node.capture.factory import make_source
from edge_node.capture.grabber import Grabber
from edge_node.commands import CommandHandler
from edge_node.config import Settings
from edge_node.discovery import HaDiscovery
from edge_node.handoff import LoopHandoff
from edge_node.messages import Event, Heartbeat, OtaStatus, Prediction, parse_mode_select
from edge_node.mqtt.connect import halt
from edge_node.mqtt.control import ControlRouter
from edge_node.mqtt.link import Link
from edge_node.ota.store import BundleStore
from edge_node.ota.updater import Updater
from edge_node.publish import PublishGate
from edge_node.reports import HeartbeatBuilder, LinkFigures, node_state, prediction
from edge_node.sdnotify import Notifier, WatchdogGate, run_watchdog
from edge_node.snapshot import Jpeg, take_snapshot
from edge_node.supervisor import Health, supervise
from edge_node.topics import Topics
from edge_node.vision.loading import load, select_model
from edge_node.vision.modes import MODE_RESOLUTION, ModeController
from edge_node.vision.pipeline import Failure, Output, Pipeline, Result

__all__ = ["Node"]

log = logging.getLogger(__name__)

SHUTDOWN_OTA_GRACE = 4.0  # seconds a running update gets to end cleanly when the node stops


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
        memory.limit_arenas(2)  # before any worker thread exists: see edge_node/memory.py
        memory.fix_mmap_threshold()
        self.settings = settings
        self.model_source = model_source
        self.topics = Topics(settings.topic_prefix, settings.node_id)
        self._on_prediction = on_prediction
        self.gate = PublishGate(settings.publish.policy, settings.publish.max_hz)
        self.notifier = Notifier.from_env()
        self.watchdog = WatchdogGate(timeout_s=max(5.0, settings.camera.stall_timeout))
        cam = settings.camera
        self.grabber = Grabber(
            lambda: make_source(cam), stall_timeout=cam.stall_timeout, reopen_delay=cam.reopen_delay, at_end=cam.at_end
        )
        cfg = settings.model
        self.device_cache = settings.state_dir / "device-choice.json"
        model, choice = select_model(
            bundle, cfg, resolution=MODE_RESOLUTION.get(settings.mode, 224), cache=self.device_cache
        )
        controller = ModeController(settings.auto, model.resolutions, mode=settings.mode, workers=model.workers)
        # Only the resolution the mode asks for is built now; others are built when a mode needs them.
        loaded = load(model, check=[model.nearest(controller.resolution)], keep=cfg.sessions, choice=choice)
        self.pipeline = Pipeline(
            self.grabber.slot, loaded, controller, self, keep=cfg.sessions, fps_window=settings.auto.window
        )
        self.health = Health(settings.supervisor, camera_stall=cam.stall_timeout, at_end=cam.at_end)
        self.beats = HeartbeatBuilder(settings.node_id)
        self.updater = (
            None
            if store is None
            else Updater(
                settings.ota,
                store,
                self.pipeline,
                node_id=settings.node_id,
                model_cfg=cfg,
                sink=self,
                device_cache=self.device_cache,
            )
        )
        self.commands = CommandHandler(
            self._command_routes(),
            self.gate,
            set_mode=self.pipeline.set_mode,
            emit=self.event,
            publish_state=self.publish_state,
            publish_heartbeat=self.publish_heartbeat,
            updates=self.updater,
            take_snapshot=self.snapshot,
            publish_snapshot=lambda jpeg: self.link.publish(self.topics.snapshot, jpeg, qos=1),
        )
        self.discovery = (
            HaDiscovery(
                settings.ha,
                prefix=settings.topic_prefix,
                node_id=settings.node_id,
                model_name=lambda: self.pipeline.model.info.name,
                publish=lambda topic, payload: self.link.publish(topic, payload, qos=1, retain=True),
            )
            if settings.ha.enabled
            else None
        )
        subscriptions = tuple(self.commands.routes)
        if self.discovery is not None:
            subscriptions = (*subscriptions, self.discovery.status_topic)
        self.link = Link(
            settings.mqtt,
            self.topics,
            client_id=settings.mqtt.client_id or f"ghostpi-{settings.node_id}",
            subscriptions=subscriptions,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self._handoff: LoopHandoff[Output | None] | None = None
        self._ready = False
        self._last: Result | None = None  # what a snapshot is captioned with
        self._choice_announced = False
        self._stop = asyncio.Event()
        self.published = 0

    def _command_routes(self) -> dict[str, ControlRouter]:
        """The topics the node takes commands on, each with its router. Home Assistant gets a topic of its own
        that carries only a mode (never ``all``), so its identity cannot send any other command (docs/security.md)."""
        mqtt, topics = self.settings.mqtt, self.topics
        control = ControlRouter(max_bytes=mqtt.max_control_bytes, rate=mqtt.control_rate)
        routes = dict.fromkeys(topics.subscriptions, control)  # the node's own control topic and the fleet's
        if self.settings.ha.enabled:
            routes[topics.ha_mode] = ControlRouter(
                max_bytes=mqtt.max_control_bytes, rate=mqtt.control_rate, parse=parse_mode_select
            )
        return routes

    # --- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._handoff = LoopHandoff(loop, self._deliver)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.grabber.start()
        self.pipeline.start()
        info = self.pipeline.model.info
        log.info(
            "node %s running: camera=%s model=%s %s (%s %s) mode=%s %dpx",
            self.settings.node_id,
            self.settings.camera.source,
            info.name,
            info.version,
            info.runtime,
            info.precision,
            self.pipeline.mode.value,
            self.pipeline.resolution,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.link.run(), name="mqtt"),
                    tg.create_task(self._heartbeats(), name="heartbeat"),
                    tg.create_task(run_watchdog(self.notifier, self.watchdog), name="watchdog"),
                    tg.create_task(self._supervise(), name="supervisor"),
                ]
                if self.updater is not None:
                    tasks.append(tg.create_task(self.updater.run(), name="ota"))
                await self._stop.wait()
                self.notifier.stopping()
                if self.updater is not None:  # an update in progress ends cleanly and says so
                    await self.updater.aclose(SHUTDOWN_OTA_GRACE)
                # Stop producing first, so the link has nothing left to send but the offline status.
                await asyncio.to_thread(self._stop_workers)
                await self.link.close()
                for task in reversed(tasks):
                    await halt(task)
        finally:
            self._stop_workers()
            self.notifier.close()
            log.info("node %s stopped", self.settings.node_id)

    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutting down")
        self._stop.set()

    def _stop_workers(self) -> None:
        self.pipeline.stop()
        self.grabber.stop()

    async def _supervise(self) -> None:
        await supervise(
            self.health,
            camera=self.grabber.snapshot,
            pipeline=self.pipeline.snapshot,
            emit=self._supervised,
            restart_pipeline=self.pipeline.restart,
            restart_camera=self.grabber.restart,
            alive=self.watchdog.progress,
            clock=time.monotonic,
        )

    def _supervised(self, ev: Event) -> None:
        self.event(ev)
        if ev.cmd == "camera_end" and self.settings.camera.at_end == "exit":
            self.stop()

    # --- pipeline → loop (Listener; called on the pipeline's threads) --------------------------------------

    def on_output(self, item: Output) -> None:
        if self._handoff is not None:
            self._handoff.put(item)

    def on_change(self) -> None:
        if self._handoff is not None:
            self._handoff.put(None)  # None: publish the state again

    def _deliver(self, item: Output | None) -> None:
        """On the loop: one frame's outcome, or (None) a change of what serves."""
        if item is None:
            self.publish_state()
            return
        if self.updater is not None:
            self.updater.observe(item)
        if isinstance(item, Failure):
            if item.seq is None:  # a resolution could not be loaded: the mode's switch did not happen
                self.event(
                    Event(cmd="model_load_failed", ok=False, error=item.error, detail={"resolution": item.resolution})
                )
            return
        self._publish_prediction(item)

    def _publish_prediction(self, r: Result) -> None:
        self._last = r
        if not self._ready:
            self._ready = True
            self.notifier.ready()
            best = r.classification.best
            log.info(
                "first inference done: %s (%.2f) at %dpx", best.label, best.confidence, r.classification.resolution
            )
        if not self.gate.allow(r.classification.best.label, time.monotonic()):
            return
        msg = prediction(self.settings.node_id, r)
        if self.link.publish_fast(self.topics.predictions, msg.to_bytes()):
            self.published += 1
        if self._on_prediction is not None:
            self._on_prediction(msg)

    # --- MQTT side -----------------------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        self._announce_choice()
        self.publish_state()
        if self.discovery is not None:
            self.discovery.announce()
        if self.updater is not None:
            self.updater.republish()

    async def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if self.commands.accepts(topic):
            await self.commands.handle(topic, payload, retained=retained, now=time.monotonic())
        elif self.discovery is not None and topic == self.discovery.status_topic:
            self.discovery.on_status(payload)

    def _announce_choice(self) -> None:
        """Once: an INT8 file that failed its on-device accuracy check, and what serves instead."""
        choice = self.pipeline.snapshot().choice
        if self._choice_announced or choice is None or choice.note is None:
            return
        self._choice_announced = True
        c = choice.candidate
        failed = [f"{k.runtime} {k.resolution}px {k.agreement:.1%}" for k in choice.checks if not k.passed]
        detail: dict[str, object] = {"serving": f"{c.runtime} {c.precision}", "failed": failed}
        self.event(Event(cmd="model_check_failed", ok=False, error=choice.note, detail=detail))

    # --- publishers (also the OTA updater's sink) --------------------------------------------------------------

    def event(self, ev: Event) -> None:
        self.link.publish(self.topics.events, ev.to_bytes(), qos=1)

    def ota(self, st: OtaStatus) -> None:
        self.link.publish(self.topics.ota, st.to_bytes(), qos=1, retain=True)

    def publish_state(self) -> None:
        state = node_state(self.settings.node_id, self.pipeline.snapshot(), self.gate.policy, self.gate.max_hz)
        self.link.publish(self.topics.state, state.to_bytes(), qos=1, retain=True)

    def heartbeat(self) -> Heartbeat:
        link = self.link
        return self.beats.build(
            pipe=self.pipeline.snapshot(),
            cam=self.grabber.snapshot(),
            link=LinkFigures(
                link.reconnects, dict(link.dropped_offline), link.denied, link.offline_s, link.server, link.failovers
            ),
            pipeline_state=self.health.pipeline,
            restarts=self.health.restarts,
            model_source=self.updater.model_source if self.updater is not None else self.model_source,
        )

    async def snapshot(self) -> Jpeg:
        """The latest frame as a small captioned JPEG (edge_node/snapshot.py); refused unless enabled."""
        cfg, last = self.settings.snapshot, self._last
        frame = self.pipeline.latest_frame() if cfg.enabled else None
        best = last.classification.best if last is not None else None
        label, confidence = (best.label, best.confidence) if best is not None else (None, None)
        camera = self.grabber.state()
        return await asyncio.to_thread(take_snapshot, cfg, frame, label, confidence, camera)

    def publish_heartbeat(self) -> None:
        self.link.publish_fast(self.topics.heartbeat, self.heartbeat().to_bytes())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat.interval)
            self.publish_heartbeat()
