"""``edge-node record``: the composition root. A source (MQTT or NATS) feeds the intake, the batching writer
owns the database, and a small task publishes the recorder's own heartbeat with its counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from edge_node.config import MqttConfig, RecordConfig
from edge_node.node.telemetry import rss_mb
from edge_node.record.intake import Intake
from edge_node.record.mqtt_source import MqttSource
from edge_node.record.store import open_store
from edge_node.record.writer import BatchWriter, WriterStats
from edge_node.wire import RecorderHeartbeat, Topics

__all__ = ["Recorder", "heartbeat"]

log = logging.getLogger(__name__)


def heartbeat(name: str, started: float, now: float, source: str, store: str, s: WriterStats) -> RecorderHeartbeat:
    return RecorderHeartbeat(
        recorder=name, ts=round(now, 3), uptime_s=round(now - started, 1), source=source, store=store,
        rows_written=s.rows_written, duplicates=s.duplicates, queued=s.queued,
        dropped={k: v for k, v in s.dropped.items() if v}, write_errors=s.write_errors,
        lag_p50_s=None if s.lag_p50_s is None else round(s.lag_p50_s, 4),
        lag_p95_s=None if s.lag_p95_s is None else round(s.lag_p95_s, 4), rss_mb=rss_mb(),
    )  # fmt: skip


class Recorder:
    def __init__(self, cfg: RecordConfig, mqtt: MqttConfig, prefix: str, state_dir: Path) -> None:
        self._cfg = cfg
        self._prefix = prefix
        self.writer = BatchWriter(lambda: open_store(cfg, state_dir), cfg)
        intake = Intake(prefix, self.writer)
        if cfg.nats_servers:
            from edge_node.record.nats_source import NatsSource

            self.source: MqttSource | NatsSource = NatsSource(cfg, prefix, intake, mqtt)
        else:
            self.source = MqttSource(mqtt, cfg, prefix, intake)
        self._store_kind = "postgres" if cfg.dsn is not None else "sqlite"
        self._started = time.time()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.writer.start)
        try:
            source = asyncio.create_task(self.source.run(), name="record-source")
            beat = asyncio.create_task(self._beat(), name="record-heartbeat")
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({source, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (beat, source, stopped):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if source in done and source.exception() is not None:
                raise source.exception()  # type: ignore[misc]
        finally:
            await asyncio.to_thread(self.writer.stop)
            s = self.writer.stats()
            log.info("recorder stopped: %d rows written, %d duplicates skipped, dropped %s", s.rows_written,
                     s.duplicates, dict(s.dropped))  # fmt: skip

    async def _beat(self) -> None:
        await self.source.subscribed.wait()
        topic = Topics.recorder_heartbeat(self._prefix, self._cfg.name)
        while True:
            hb = heartbeat(self._cfg.name, self._started, time.time(), self.source.kind, self._store_kind,
                           self.writer.stats())  # fmt: skip
            await self.source.publish(topic, hb.to_bytes())
            await asyncio.sleep(self._cfg.heartbeat_interval)


def run_recorder(cfg: RecordConfig, mqtt: MqttConfig, prefix: str, state_dir: Path) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Recorder(cfg, mqtt, prefix, state_dir).run(stop)

    asyncio.run(main())
    return 0
