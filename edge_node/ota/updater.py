"""Over-the-air model updates that never leave the node without a working model.

``update_model``: download -> sha256 of the archive -> manifest signature, version and serial (read from the
archive's first members; nothing is written before) -> extract only the listed files, at their listed sizes
and hashes -> build and warm up the new classifier off the inference thread -> swap it in between two frames
-> watch its first ``health_frames`` inferences -> commit (raising the store's minimum serial), or swap the
old model back automatically.
The old model serves until the swap, and the state file names the new bundle only after the health
check, so a crash or kill at any point restarts on the last good bundle.

This module is the intake (one update at a time, duplicate ids, shutdown), the health watch and the
reporting; fetching and verifying is :mod:`edge_node.ota.fetch`'s job, building, swapping and committing
:mod:`edge_node.ota.activate`'s.

One update runs at a time; a command id that already ran is answered, not run again (ids survive
restarts). Results go to the sink: one final :class:`Event` per command, progress on the retained
:class:`OtaStatus`. Commands run as tasks of :meth:`Updater.run`, which lives in the node's TaskGroup;
:meth:`Updater.aclose` interrupts a download and lets the command end before the node stops.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from edge_node.bundle import Bundle
from edge_node.config import ModelConfig, OtaConfig
from edge_node.errors import AccuracyError, EdgeError, UpdateError
from edge_node.ota.activate import Activator
from edge_node.ota.download import Interrupter, Progress
from edge_node.ota.fetch import Fetcher, StepFailed
from edge_node.ota.store import BundleStore, Slot, slot_name
from edge_node.wire import Event, OtaPhase, OtaStatus, Rollback, UpdateModel

if TYPE_CHECKING:
    from edge_node.vision import Output, Pipeline

__all__ = ["OtaSink", "Updater"]

log = logging.getLogger(__name__)

PROGRESS_STEP = 5.0  # percent between two progress reports
PROGRESS_PERIOD = 1.0  # ... or seconds


class OtaSink(Protocol):
    """Where the updater reports: ``<prefix>/<node>/events`` and the retained ``<prefix>/<node>/ota``."""

    def event(self, ev: Event) -> None: ...

    def ota(self, st: OtaStatus) -> None: ...


class Updater:
    """Runs ``update_model`` and ``rollback`` commands against a running pipeline."""

    def __init__(
        self,
        cfg: OtaConfig,
        store: BundleStore,
        pipeline: Pipeline,
        *,
        node_id: str,
        model_cfg: ModelConfig,
        sink: OtaSink,
        backoff: float = 1.0,
        device_cache: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.pipeline = pipeline
        self.node_id = node_id
        self.model_cfg = model_cfg
        self.sink = sink
        self._busy: str | None = None  # "<cmd> <version>, id <id>" while a command runs
        self._busy_id: str | None = None
        self._cancel = threading.Event()  # for threads: the download stops
        self._closing = asyncio.Event()  # for the loop: a health watch ends
        self._interrupter = Interrupter()
        self.fetcher = Fetcher(cfg, store, cancel=self._cancel, interrupter=self._interrupter, backoff=backoff)
        self.activator = Activator(pipeline, store, model_cfg, device_cache=device_cache)
        self._running: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._watch: Callable[[Output], None] | None = None  # the health check's eye on the output stream
        self._status = self._initial_status()
        self._announced = False
        if cfg.allow_unsigned_models and cfg.trusted_keys:
            log.warning(
                "EDGE_OTA__ALLOW_UNSIGNED_MODELS has no effect while EDGE_OTA__TRUSTED_KEYS is set: every bundle "
                "must be signed by one of the trusted keys"
            )
        elif cfg.allow_unsigned_models:
            log.warning("EDGE_OTA__ALLOW_UNSIGNED_MODELS is set: unsigned model bundles will be installed")
        elif not cfg.trusted_keys:
            log.warning("no EDGE_OTA__TRUSTED_KEYS configured: over-the-air model updates are refused")

    # --- what the node asks ---------------------------------------------------------------------------

    @property
    def model_source(self) -> str:
        """For the heartbeat: "active", "previous" or "factory"."""
        return self.store.running.source

    @property
    def status(self) -> OtaStatus:
        return self._status

    @property
    def backoff(self) -> float:
        """Seconds before the first download retry (tests set it near 0: their faults are deterministic)."""
        return self.fetcher.backoff

    @backoff.setter
    def backoff(self, seconds: float) -> None:
        self.fetcher.backoff = seconds

    def republish(self) -> None:
        """Re-send the retained OTA status (call on every MQTT connect); the first call also reports a
        start-up fallback or an update that a restart interrupted."""
        self.sink.ota(self._status)
        if self._announced:
            return
        self._announced = True
        interrupted = self.store.interrupted
        if interrupted is not None:
            self.sink.event(
                Event(
                    id=interrupted.get("id"),
                    cmd=interrupted.get("cmd", "update_model"),
                    ok=False,
                    error=f"the update to {interrupted.get('version')} was interrupted by a restart; "
                    f"serving {self._serving_version()}",
                    detail={"phase": "failed", "stage": "restart", "serving": self._serving_version()},
                )
            )
        if self.store.startup_errors:
            self.sink.event(
                Event(
                    cmd="model_fallback",
                    ok=False,
                    error="; ".join(self.store.startup_errors),
                    detail={"model_source": self.model_source, "serving": self._serving_version()},
                )
            )

    async def run(self) -> None:
        """Run submitted commands until cancelled; the node runs this in its TaskGroup."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                await asyncio.Event().wait()
            finally:
                self._group = None

    def submit(self, cmd: UpdateModel | Rollback) -> None:
        """Start ``cmd`` as a task of :meth:`run` (or refuse it at once with an event)."""
        if self._group is None:
            self.sink.event(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error="the node is shutting down"))
            return
        self._group.create_task(self.handle(cmd), name=f"ota-{cmd.cmd}")

    async def aclose(self, grace: float = 4.0) -> None:
        """Node shutdown: interrupt a download and give the running command ``grace`` s to end cleanly
        (it reports, and the store stays consistent); then it is cancelled."""
        self._cancel.set()
        self._closing.set()
        self._interrupter.interrupt()
        task = self._running
        if task is not None and not task.done():
            _, pending = await asyncio.wait({task}, timeout=grace)
            for t in pending:
                t.cancel()
                await asyncio.wait({t}, timeout=1.0)

    def observe(self, item: Output) -> None:
        """Every frame's outcome, on the loop: what the health check of a new model watches."""
        if self._watch is not None:
            self._watch(item)

    async def handle(self, cmd: UpdateModel | Rollback) -> None:
        """Run one command to its end and answer it with exactly one event; never raises for a failure."""
        if cmd.id is not None:
            if cmd.id == self._busy_id:
                log.info("command %s is already running", cmd.id)
                self.sink.event(
                    Event(
                        id=cmd.id,
                        cmd=cmd.cmd,
                        ok=False,
                        error="this command is already running",
                        detail={"duplicate": True},
                    )
                )
                return
            done = self.store.outcome(cmd.id)
            if done is not None:
                log.info("command %s already ran (ok=%s); not running it again", cmd.id, done)
                self.sink.event(Event(id=cmd.id, cmd=cmd.cmd, ok=done, detail={"duplicate": True}))
                return
        if self._busy is not None:
            self.sink.event(
                Event(
                    id=cmd.id,
                    cmd=cmd.cmd,
                    ok=False,
                    error=f"another update is in progress ({self._busy}); try again when it has finished",
                )
            )
            return
        if self._cancel.is_set():
            self.sink.event(Event(id=cmd.id, cmd=cmd.cmd, ok=False, error="the node is shutting down"))
            return
        what = cmd.version if isinstance(cmd, UpdateModel) else "previous"
        self._busy, self._busy_id = f"{cmd.cmd} {what}, id {cmd.id}", cmd.id
        self._running = asyncio.current_task()
        final: Event | None = None
        try:
            final = await (self._update(cmd) if isinstance(cmd, UpdateModel) else self._rollback(cmd))
            if cmd.id is not None and not self._cancel.is_set():
                await asyncio.to_thread(self.store.remember, cmd.id, final.ok)
        except asyncio.CancelledError:
            final = self._fail(cmd, "shutdown", "interrupted by the node shutting down; send the command again")
            raise
        finally:
            self._busy = self._busy_id = None
            self._running = None
            # The answer goes out last: whoever reads it may send the next command at once.
            if final is not None:
                self.sink.event(final)

    # --- update_model ---------------------------------------------------------------------------------

    async def _update(self, cmd: UpdateModel) -> Event:
        started = time.monotonic()
        running = self.store.running
        if not self.cfg.trusted_keys and not self.cfg.allow_unsigned_models:
            return self._fail(
                cmd,
                "verify",
                "no trusted keys are configured (EDGE_OTA__TRUSTED_KEYS), so no bundle can be verified; "
                "refusing the update",
                report_status=False,
            )
        try:
            slot = slot_name(cmd.version, cmd.sha256)
        except UpdateError as exc:
            return self._fail(cmd, "verify", str(exc), report_status=False)
        if slot == running.slot:
            self._report(cmd, "active", cmd.version)
            return Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail={"version": cmd.version, "already_active": True})
        if cmd.version == running.bundle.manifest.version:
            return self._fail(
                cmd,
                "verify",
                f"version {cmd.version} is already serving with different content; give the new build a new version",
                report_status=False,
            )
        await asyncio.to_thread(self.store.mark_pending, cmd.id, cmd.cmd, cmd.version)
        try:
            try:
                progress = self._progress_reporter(cmd)
                bundle = await self.fetcher.fetch(
                    cmd, slot, phase=lambda step: self._step(cmd, step), progress=progress
                )
            except StepFailed as exc:
                if self._cancel.is_set():
                    return self._fail(cmd, exc.stage, f"interrupted by the node shutting down ({exc})")
                return self._fail(cmd, exc.stage, str(exc))
            return await self._activate(cmd, slot, bundle, started)
        finally:
            # Synchronous on purpose: it must happen even while the task is being cancelled (a small file write).
            self.store.mark_pending(None)

    async def _activate(self, cmd: UpdateModel, slot: Slot, bundle: Bundle, started: float) -> Event:
        self._report(cmd, "activating", cmd.version)
        try:
            new = await asyncio.to_thread(self.activator.build, bundle)
        except EdgeError as exc:
            await asyncio.to_thread(self.store.discard, slot)
            return self._fail(cmd, "check" if isinstance(exc, AccuracyError) else "warmup", str(exc))
        version = new.model.info.version
        old = self.activator.swap_in(new)
        try:
            verdict, stats = await self._watch_health(version)
        except BaseException:  # cancelled (shutdown): never leave an unconfirmed model serving
            self.activator.revert(old)
            raise
        if verdict is not None:
            self.activator.revert(old)
            await asyncio.to_thread(self.store.discard, slot)
            serving = self._serving_version()
            error = f"{cmd.version} failed its health check ({verdict}); rolled back to {serving}"
            return self._fail(cmd, "health", error, phase="rolled_back", status_version=serving, health=stats)
        previous = self.store.running.bundle.manifest.version
        await self.activator.commit(slot, bundle, old)
        self._report(cmd, "active", cmd.version)
        return Event(
            id=cmd.id,
            cmd=cmd.cmd,
            ok=True,
            detail={
                "version": cmd.version,
                "previous": previous,
                "phase": "active",
                "signed_by": bundle.signed_by,
                "serving": f"{new.model.info.runtime} {new.model.info.precision}",
                "note": new.choice.note if new.choice is not None else None,
                "health": stats,
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    async def _watch_health(self, version: str) -> tuple[str | None, dict[str, object]]:
        """Watch the first inferences of ``version`` (now serving). Returns (None, stats) when healthy, else
        (reason, stats). Cancelled (shutdown), it swaps nothing itself: the caller's ``finally`` does."""
        loop = asyncio.get_running_loop()
        want = self.cfg.health_frames
        verdict: asyncio.Future[object] = loop.create_future()
        latencies: list[float] = []

        def watch(item: Output) -> None:
            from edge_node.vision import Failure

            if verdict.done() or item.model.version != version:
                return
            if isinstance(item, Failure):
                verdict.set_result(f"{item.stage} error: {item.error}")
                return
            latencies.append(item.total_ms)
            if len(latencies) >= want:
                median = statistics.median(latencies)
                bound = self.cfg.health_max_latency_ms
                verdict.set_result(
                    None if median <= bound else f"median latency {median:.1f} ms is over the {bound:.0f} ms bound"
                )

        self._watch = watch
        closing: asyncio.Future[object] = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait(
                {verdict, closing}, timeout=self.cfg.health_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._watch = None
            closing.cancel()
        reason: str | None
        if verdict in done:
            reason = cast(str | None, verdict.result())
        elif closing in done:
            reason = "interrupted by the node shutting down"
        else:
            reason = f"only {len(latencies)} of {want} inferences within {self.cfg.health_timeout:.0f}s"
        stats: dict[str, object] = {"frames": len(latencies)}
        if latencies:
            stats |= {"median_ms": round(statistics.median(latencies), 2), "max_ms": round(max(latencies), 2)}
        return reason, stats

    # --- rollback -------------------------------------------------------------------------------------

    async def _rollback(self, cmd: Rollback) -> Event:
        target = self.store.previous
        if target is None:
            where = "the factory bundle" if self.store.running.source == "factory" else self.store.running.slot
            return self._fail(
                cmd, "rollback", f"there is no previous bundle to roll back to (serving {where})", report_status=False
            )
        current = self._serving_version()
        try:
            bundle = await asyncio.to_thread(self.store.open_slot, target)
            new = await asyncio.to_thread(self.activator.build, bundle)
        except EdgeError as exc:
            return self._fail(cmd, "rollback", f"the previous bundle {target} is unusable: {exc}", report_status=False)
        await self.activator.switch(target, bundle, new)
        version = bundle.manifest.version
        log.info("rolled back from %s to %s on request", current, version)
        self._report(cmd, "rolled_back", version)
        return Event(
            id=cmd.id,
            cmd=cmd.cmd,
            ok=True,
            detail={"version": version, "from": current, "model_source": self.model_source},
        )

    # --- reporting ------------------------------------------------------------------------------------

    def _fail(
        self,
        cmd: UpdateModel | Rollback,
        stage: str,
        error: str,
        *,
        report_status: bool = True,
        phase: OtaPhase = "failed",
        status_version: str | None = None,
        **detail: object,
    ) -> Event:
        """The event for a failed command (reported on ``ota`` too); the model serving is the one from before."""
        version = cmd.version if isinstance(cmd, UpdateModel) else None
        log.error("%s %s failed at %s: %s", cmd.cmd, version or "", stage, error)
        if report_status:
            self._report(cmd, phase, status_version or version, error=error)
        serving = self._serving_version()
        return Event(
            id=cmd.id,
            cmd=cmd.cmd,
            ok=False,
            error=error,
            detail={"version": version, "phase": phase, "stage": stage, "serving": serving, **detail},
        )

    def _report(
        self,
        cmd: UpdateModel | Rollback,
        phase: OtaPhase,
        version: str | None,
        *,
        progress: float | None = None,
        error: str | None = None,
    ) -> None:
        self._status = OtaStatus(
            node=self.node_id,
            ts=round(time.time(), 3),
            phase=phase,
            version=version,
            progress=progress,
            error=error,
            id=cmd.id,
        )
        self.sink.ota(self._status)

    def _progress_reporter(self, cmd: UpdateModel) -> Progress:
        """A download callback (runs in the download thread) that reports at most every 5% or second."""
        loop = asyncio.get_running_loop()
        last = [0.0, time.monotonic()]

        def report(done: int, total: int | None) -> None:
            total = total or cmd.size
            pct = 100.0 * done / total if total else 0.0
            now = time.monotonic()
            if pct - last[0] < PROGRESS_STEP and now - last[1] < PROGRESS_PERIOD and done != total:
                return
            last[:] = [pct, now]
            loop.call_soon_threadsafe(self._progress, cmd, round(pct, 1))

        return report

    def _step(self, cmd: UpdateModel, phase: OtaPhase) -> None:
        """A fetch step began: "downloading" reports 0 % progress, "verifying" none."""
        self._report(cmd, phase, cmd.version, progress=0.0 if phase == "downloading" else None)

    def _progress(self, cmd: UpdateModel, pct: float) -> None:
        if self._status.phase == "downloading":
            self._report(cmd, "downloading", cmd.version, progress=pct)

    def _serving_version(self) -> str:
        return self.pipeline.model.info.version

    def _initial_status(self) -> OtaStatus:
        running = self.store.running
        return OtaStatus(
            node=self.node_id,
            ts=round(time.time(), 3),
            phase="active",
            version=running.bundle.manifest.version,
        )
