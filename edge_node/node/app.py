"""The composition root: builds the parts, connects them, runs them in one TaskGroup and stops them cleanly.

Data paths (see docs/architecture.md):
  capture thread → frame slot → inference workers (preprocess + infer) → publisher (handoff) → outbox → link
  link → inbound → command handler → outbox (events/, retained state/)
  snapshots of camera and pipeline → supervisor → events, restarts, systemd watchdog

Nothing here publishes, assembles a payload or blocks: ``builder.build`` loads the model off the loop first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from edge_node.capture.factory import make_source
from edge_node.capture.grabber import Grabber
from edge_node.config import Settings
from edge_node.mqtt import Inbound, Link, halt
from edge_node.node.commands import CommandHandler, Snapshots, command_routes
from edge_node.node.discovery import HaDiscovery
from edge_node.node.inbound import NodeInbound
from edge_node.node.outbox import Outbox, Sender
from edge_node.node.publish_policy import PublishGate
from edge_node.node.publisher import PredictionPublisher
from edge_node.node.sdnotify import Notifier, WatchdogGate, run_watchdog
from edge_node.node.status import LinkCounters, NodeStatus
from edge_node.node.supervisor import Health, supervise
from edge_node.node.watching import Watcher
from edge_node.ota.store import BundleStore
from edge_node.ota.updater import Updater
from edge_node.vision.modes import ModeController
from edge_node.vision.pipeline import Loaded, Pipeline
from edge_node.watch import Journal, load_rules
from edge_node.wire import Event, Prediction, Topics, WatchRule

__all__ = ["Node", "NodeLink"]

log = logging.getLogger(__name__)

SHUTDOWN_OTA_GRACE = 4.0  # seconds a running update gets to end cleanly when the node stops
JOURNAL_GRACE = 5.0  # seconds the open detections get to reach the disk when the node stops


class NodeLink(Sender, LinkCounters, Protocol):
    """What the node needs of its MQTT link: ``edge_node.mqtt.Link``, or the in-process fake of the tests."""

    def serve(self, inbound: Inbound) -> AbstractAsyncContextManager[object]: ...

    async def running(self) -> None: ...


class Node:
    """One running edge node: ``await (await builder.build(settings, bundle)).run()`` until SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: Settings,
        loaded: Loaded,
        controller: ModeController,
        *,
        model_source: str = "active",
        store: BundleStore | None = None,
        on_prediction: Callable[[Prediction], None] | None = None,
        link: NodeLink | None = None,  # tests pass a FakeLink (tests/support/fakelink.py)
    ) -> None:
        self.settings = settings
        node_id, cam = settings.node_id, settings.camera
        topics = Topics(settings.topic_prefix, node_id)
        self.link: NodeLink = link or Link(
            settings.mqtt, topics, client_id=settings.mqtt.client_id or f"ghostpi-{node_id}"
        )
        self.outbox = Outbox(self.link, topics)
        self.notifier = Notifier.from_env()
        self.watchdog = WatchdogGate(timeout_s=max(5.0, cam.stall_timeout))
        self.grabber = Grabber(
            lambda: make_source(cam), stall_timeout=cam.stall_timeout, reopen_delay=cam.reopen_delay, at_end=cam.at_end
        )
        self.gate = PublishGate(settings.publish.policy, settings.publish.max_hz)
        self.watcher = Watcher(
            node_id,
            load_rules(settings.watch),
            self.outbox,
            Journal(self.watch_journal(settings)),
            labels=loaded.model.labels,
            snapshots=settings.snapshot,
        )
        self.publisher = PredictionPublisher(
            node_id,
            self.gate,
            self.outbox,
            ready=self.notifier.ready,
            on_prediction=on_prediction,
            watch=self.watcher.on_result,
        )
        self.pipeline = Pipeline(
            self.grabber.slot,
            loaded,
            controller,
            self.publisher,
            keep=settings.model.sessions,
            fps_window=settings.auto.window,
        )
        self.health = Health(settings.supervisor, camera_stall=cam.stall_timeout, at_end=cam.at_end)
        self.updater: Updater | None = None
        if store is not None:
            self.updater = Updater(
                settings.ota,
                store,
                self.pipeline,
                node_id=node_id,
                model_cfg=settings.model,
                sink=self.outbox,
                device_cache=self.device_cache(settings),
            )
        updater = self.updater
        self.status = NodeStatus(
            node_id,
            self.outbox,
            self.gate,
            self.health,
            self.link,
            pipeline=self.pipeline.snapshot,
            camera=self.grabber.snapshot,
            model_source=(lambda: updater.model_source) if updater is not None else (lambda: model_source),
            watch=self.watcher.state,
            detections=self.watcher.counts,
        )
        snapshots = Snapshots(
            settings.snapshot,
            frame=self.pipeline.latest_frame,
            caption=self.publisher.caption,
            camera=self.grabber.state,
        )
        commands = CommandHandler(
            command_routes(settings.mqtt, topics, ha=settings.ha.enabled),
            self.gate,
            set_mode=self.pipeline.set_mode,
            emit=self.outbox.event,
            publish_state=self.status.state,
            publish_heartbeat=self.status.publish_heartbeat,
            updates=updater,
            take_snapshot=snapshots.take,
            publish_snapshot=self.outbox.snapshot,
            set_watch=self._set_watch,
        )
        discovery = None
        if settings.ha.enabled:
            discovery = HaDiscovery(
                settings.ha,
                prefix=settings.topic_prefix,
                node_id=node_id,
                model_name=lambda: self.pipeline.model.info.name,
                publish=self.outbox.discovery,
                rules=lambda: [r.name for r in self.watcher.tracker.rules],
            )
        self._discovery = discovery
        say_on_connect = [self.status.announce_choice, self.status.state]
        say_on_connect += [discovery.announce] if discovery is not None else []
        say_on_connect += [updater.republish] if updater is not None else []
        self.inbound = NodeInbound(commands, discovery, on_connect=say_on_connect)
        self._stop = asyncio.Event()

    @staticmethod
    def device_cache(settings: Settings) -> Path:
        """Where the node remembers what serves best on this device."""
        return settings.state_dir / "device-choice.json"

    @staticmethod
    def watch_journal(settings: Settings) -> Path:
        """Where the node keeps its open detections, to end them after a crash (docs/detections.md)."""
        return settings.state_dir / "watch-open.json"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        observe = self.updater.observe if self.updater is not None else None
        self.publisher.start(loop, changed=self.serving_changed, observe=observe)
        self.watcher.recover()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.grabber.start()
        self.pipeline.start()
        info, s = self.pipeline.model.info, self.settings
        log.info(
            "node %s running: camera=%s model=%s %s (%s %s) mode=%s %dpx",
            s.node_id,
            s.camera.source,
            info.name,
            info.version,
            info.runtime,
            info.precision,
            self.pipeline.mode.value,
            self.pipeline.resolution,
        )
        try:
            # Leaving the link last sends what is queued, then `offline`: after the producers have stopped.
            async with self.link.serve(self.inbound), asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.link.running(), name="mqtt"),
                    tg.create_task(self.status.heartbeats(s.heartbeat.interval), name="heartbeat"),
                    tg.create_task(run_watchdog(self.notifier, self.watchdog), name="watchdog"),
                    tg.create_task(self._supervise(), name="supervisor"),
                    tg.create_task(self.watcher.ticks(), name="watch"),
                    tg.create_task(self.watcher.journal_writer(), name="watch-journal"),
                ]
                if self.updater is not None:
                    tasks.append(tg.create_task(self.updater.run(), name="ota"))
                await self._stop.wait()
                self.notifier.stopping()
                if self.updater is not None:  # an update in progress ends cleanly and says so
                    await self.updater.aclose(SHUTDOWN_OTA_GRACE)
                await asyncio.to_thread(self._stop_workers)
                self.watcher.shutdown()  # before the link leaves: the ends go out with what is queued
                await self.watcher.journal_drained(JOURNAL_GRACE)  # nothing left open on disk
                for task in reversed(tasks):
                    await halt(task)
        finally:
            self._stop_workers()
            self.notifier.close()
            log.info("node %s stopped", s.node_id)

    def serving_changed(self) -> None:
        """What serves changed (a swap, a mode step): the watch rules look at the labels, the state is said again."""
        self.watcher.labels(self.pipeline.model.labels)
        self.status.state()

    def _set_watch(self, rules: list[WatchRule]) -> dict[str, object]:
        """``set_watch``: new rules, and Home Assistant learns their event entities."""
        detail = self.watcher.set_rules(rules)
        if self._discovery is not None:
            self._discovery.announce()
        return detail

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
        self.outbox.event(ev)
        if ev.cmd == "camera_end" and self.settings.camera.at_end == "exit":
            self.stop()
