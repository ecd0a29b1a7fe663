"""Over-the-air model updates that never leave the node without a working model.

``update_model``: download -> sha256 -> safe unpack -> signature and file hashes -> version check ->
build and warm up the new classifier off the inference thread -> swap it in between two frames ->
watch its first ``health_frames`` inferences -> commit, or swap the old model back automatically.
The old model serves until the swap, and the state file names the new bundle only after the health
check, so a crash or kill at any point restarts on the last good bundle.

One update runs at a time; a command id that already ran is answered, not run again (ids survive
restarts). Results go to the sink: one final :class:`Event` per command, progress on the retained
:class:`OtaStatus`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_node.bundle import Bundle, open_bundle
from edge_node.bundle.archive import MAX_TOTAL, unpack
from edge_node.config import ModelConfig, OtaConfig
from edge_node.errors import EdgeError, UpdateError
from edge_node.messages import Event, OtaPhase, OtaStatus, Rollback, UpdateModel
from edge_node.ota.download import Progress, download
from edge_node.ota.store import BundleStore, Slot, slot_name

if TYPE_CHECKING:
    from edge_node.vision.classifier import Classifier
    from edge_node.vision.pipeline import Outcome, Pipeline

__all__ = ["OtaSink", "Updater"]

log = logging.getLogger(__name__)

PROGRESS_STEP = 5.0  # percent between two progress reports
PROGRESS_PERIOD = 1.0  # ... or seconds


class OtaSink(Protocol):
    """Where the updater reports: ``<prefix>/<node>/events`` and the retained ``<prefix>/<node>/ota``."""

    async def event(self, ev: Event) -> None: ...

    async def ota(self, st: OtaStatus) -> None: ...


class _Failed(UpdateError):
    """An update step failed; ``stage`` says which (download, verify, warmup, health)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


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
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.pipeline = pipeline
        self.node_id = node_id
        self.model_cfg = model_cfg
        self.sink = sink
        self.backoff = backoff
        self._busy: str | None = None  # "<cmd> <version>, id <id>" while a command runs
        self._busy_id: str | None = None
        self._cancel = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._status = self._initial_status()
        self._announced = False
        if cfg.allow_unsigned_models:
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

    def republish(self) -> None:
        """Re-send the retained OTA status (call on every MQTT connect); the first call also reports a
        start-up fallback or an update that a restart interrupted."""
        self._spawn(self.sink.ota(self._status))
        if self._announced:
            return
        self._announced = True
        interrupted = self.store.interrupted
        if interrupted is not None:
            self._spawn(
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
            )
        if self.store.startup_errors:
            self._spawn(
                self.sink.event(
                    Event(
                        cmd="model_fallback",
                        ok=False,
                        error="; ".join(self.store.startup_errors),
                        detail={"model_source": self.model_source, "serving": self._serving_version()},
                    )
                )
            )

    async def aclose(self) -> None:
        """Stop a running download and wait for outstanding reports (node shutdown)."""
        self._cancel.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    async def handle(self, cmd: UpdateModel | Rollback) -> None:
        """Run one command to its end; never raises for an update that fails."""
        if cmd.id is not None:
            if cmd.id == self._busy_id:
                log.info("command %s is already running; ignoring the duplicate", cmd.id)
                return
            done = self.store.outcome(cmd.id)
            if done is not None:
                log.info("command %s already ran (ok=%s); not running it again", cmd.id, done)
                await self.sink.event(Event(id=cmd.id, cmd=cmd.cmd, ok=done, detail={"duplicate": True}))
                return
        if self._busy is not None:
            await self.sink.event(
                Event(
                    id=cmd.id,
                    cmd=cmd.cmd,
                    ok=False,
                    error=f"another update is in progress ({self._busy}); try again when it has finished",
                )
            )
            return
        what = cmd.version if isinstance(cmd, UpdateModel) else "previous"
        self._busy, self._busy_id = f"{cmd.cmd} {what}, id {cmd.id}", cmd.id
        self._cancel.clear()
        try:
            ok = await (self._update(cmd) if isinstance(cmd, UpdateModel) else self._rollback(cmd))
            if cmd.id is not None:
                await asyncio.to_thread(self.store.remember, cmd.id, ok)
        finally:
            self._busy = self._busy_id = None

    # --- update_model ---------------------------------------------------------------------------------

    async def _update(self, cmd: UpdateModel) -> bool:
        started = time.monotonic()
        running = self.store.running
        if not self.cfg.trusted_keys and not self.cfg.allow_unsigned_models:
            return await self._fail(
                cmd,
                "verify",
                "no trusted keys are configured (EDGE_OTA__TRUSTED_KEYS), so no bundle can be verified; "
                "refusing the update",
                report_status=False,
            )
        try:
            slot = slot_name(cmd.version, cmd.sha256)
        except UpdateError as exc:
            return await self._fail(cmd, "verify", str(exc), report_status=False)
        if slot == running.slot:
            await self._report(cmd, "active", cmd.version)
            await self.sink.event(
                Event(id=cmd.id, cmd=cmd.cmd, ok=True, detail={"version": cmd.version, "already_active": True})
            )
            return True
        if cmd.version == running.bundle.manifest.version:
            return await self._fail(
                cmd,
                "verify",
                f"version {cmd.version} is already serving with different content; give the new build a new version",
                report_status=False,
            )
        await asyncio.to_thread(self.store.mark_pending, cmd.id, cmd.cmd, cmd.version)
        try:
            try:
                bundle = await self._fetch_and_verify(cmd, slot)
            except _Failed as exc:
                return await self._fail(cmd, exc.stage, str(exc))
            return await self._activate(cmd, slot, bundle, started)
        finally:
            await asyncio.to_thread(self.store.mark_pending, None)

    async def _fetch_and_verify(self, cmd: UpdateModel, slot: Slot) -> Bundle:
        """Download, unpack and verify into ``bundles/<slot>``; reuse it if it is already installed."""
        if self.store.has(slot):
            try:
                return await asyncio.to_thread(self.store.open_slot, slot)
            except EdgeError as exc:
                log.warning("installed copy of %s is unusable (%s); downloading it again", slot, exc)
        archive = self.store.staging / f"{cmd.sha256}.tar.gz"
        await self._report(cmd, "downloading", cmd.version, progress=0.0)
        try:
            await asyncio.to_thread(
                download,
                cmd.url,
                archive,
                sha256=cmd.sha256,
                size=cmd.size,
                cfg=self.cfg,
                progress=self._progress_reporter(cmd),
                cancel=self._cancel,
                backoff=self.backoff,
            )
        except EdgeError as exc:
            raise _Failed("download", str(exc)) from exc
        await self._report(cmd, "verifying", cmd.version)
        staged = self.store.staging / f"unpack-{slot}"
        try:
            bundle = await asyncio.to_thread(self._verify, archive, staged, cmd.version)
            final = await asyncio.to_thread(self.store.install, staged, slot)
        except EdgeError as exc:
            raise _Failed("verify", str(exc)) from exc
        finally:
            await asyncio.to_thread(self.store.clear_staging, archive, staged)
        return dataclasses.replace(bundle, path=final)

    def _verify(self, archive: Path, staged: Path, version: str) -> Bundle:
        """Unpack safely, check the signature and every file, and that the manifest is ``version``."""
        self.store.clear_staging(staged)
        unpack(archive, staged, max_total=min(MAX_TOTAL, 4 * self.cfg.max_bundle_bytes))
        bundle = open_bundle(
            staged,
            trusted_keys=self.cfg.trusted_keys,
            require_signature=not self.cfg.allow_unsigned_models,
        )
        if bundle.manifest.version != version:
            raise UpdateError(
                f"the bundle's manifest says version {bundle.manifest.version}, the command said {version}"
            )
        log.info("bundle %s %s verified (signed by %s)", bundle.manifest.name, version, bundle.signed_by)
        return bundle

    async def _activate(self, cmd: UpdateModel, slot: Slot, bundle: Bundle, started: float) -> bool:
        await self._report(cmd, "activating", cmd.version)
        try:
            new = await asyncio.to_thread(self._build, bundle)
        except EdgeError as exc:
            await asyncio.to_thread(self.store.discard, slot)
            return await self._fail(cmd, "warmup", str(exc))
        verdict, stats = await self._swap_and_watch(new)
        if verdict is not None:
            await asyncio.to_thread(self.store.discard, slot)
            serving = self._serving_version()
            error = f"{cmd.version} failed its health check ({verdict}); rolled back to {serving}"
            return await self._fail(cmd, "health", error, phase="rolled_back", status_version=serving, health=stats)
        previous = self.store.running.bundle.manifest.version
        await asyncio.to_thread(self.store.commit, slot, bundle)
        await self._report(cmd, "active", cmd.version)
        await self.sink.event(
            Event(
                id=cmd.id,
                cmd=cmd.cmd,
                ok=True,
                detail={
                    "version": cmd.version,
                    "previous": previous,
                    "phase": "active",
                    "signed_by": bundle.signed_by,
                    "health": stats,
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
        )
        return True

    def _build(self, bundle: Bundle) -> Classifier:
        """Load every session and run a smoke inference on a real frame (in a worker thread)."""
        from edge_node.vision.classifier import Classifier

        m = self.model_cfg
        classifier = Classifier(bundle, precision=m.precision, threads=m.threads, top_k=m.top_k)
        classifier.warmup(self.pipeline.latest_frame())
        return classifier

    async def _swap_and_watch(self, new: Classifier) -> tuple[str | None, dict[str, object]]:
        """Swap ``new`` in and watch its first inferences; swap the old one back if they are unhealthy.

        Returns (None, stats) when healthy, else (reason, stats).
        """
        loop = asyncio.get_running_loop()
        version = new.bundle.manifest.version
        want = self.cfg.health_frames
        verdict: asyncio.Future[str | None] = loop.create_future()
        latencies: list[float] = []

        def collect(outcome: Outcome) -> None:
            if verdict.done():
                return
            if not outcome.ok:
                verdict.set_result(f"inference error: {outcome.error}")
                return
            latencies.append(outcome.latency_ms)
            if len(latencies) >= want:
                median = statistics.median(latencies)
                bound = self.cfg.health_max_latency_ms
                verdict.set_result(
                    None if median <= bound else f"median latency {median:.1f} ms is over the {bound:.0f} ms bound"
                )

        def observe(outcome: Outcome) -> None:  # inference thread
            if outcome.model_version == version:
                loop.call_soon_threadsafe(collect, outcome)

        self.pipeline.add_observer(observe)
        old = self.pipeline.swap(new)
        reason: str | None
        try:
            reason = await asyncio.wait_for(verdict, self.cfg.health_timeout)
        except TimeoutError:
            reason = f"only {len(latencies)} of {want} inferences within {self.cfg.health_timeout:.0f}s"
        except BaseException:
            self.pipeline.swap(old)  # cancelled (shutdown): never leave an unconfirmed model serving
            raise
        finally:
            self.pipeline.remove_observer(observe)
        if reason is not None:
            self.pipeline.swap(old)
        stats: dict[str, object] = {"frames": len(latencies)}
        if latencies:
            stats |= {"median_ms": round(statistics.median(latencies), 2), "max_ms": round(max(latencies), 2)}
        return reason, stats

    # --- rollback -------------------------------------------------------------------------------------

    async def _rollback(self, cmd: Rollback) -> bool:
        target = self.store.previous
        if target is None:
            return await self._fail(cmd, "rollback", "there is no previous bundle to roll back to", report_status=False)
        current = self._serving_version()
        try:
            bundle = await asyncio.to_thread(self.store.open_slot, target)
            new = await asyncio.to_thread(self._build, bundle)
        except EdgeError as exc:
            return await self._fail(
                cmd, "rollback", f"the previous bundle {target} is unusable: {exc}", report_status=False
            )
        self.pipeline.swap(new)
        await asyncio.to_thread(self.store.commit, target, bundle)
        version = bundle.manifest.version
        log.info("rolled back from %s to %s on request", current, version)
        await self._report(cmd, "rolled_back", version)
        await self.sink.event(
            Event(
                id=cmd.id,
                cmd=cmd.cmd,
                ok=True,
                detail={"version": version, "from": current, "model_source": self.model_source},
            )
        )
        return True

    # --- reporting ------------------------------------------------------------------------------------

    async def _fail(
        self,
        cmd: UpdateModel | Rollback,
        stage: str,
        error: str,
        *,
        report_status: bool = True,
        phase: OtaPhase = "failed",
        status_version: str | None = None,
        **detail: object,
    ) -> bool:
        """Report a failed command; the model serving afterwards is the one that served before."""
        version = cmd.version if isinstance(cmd, UpdateModel) else None
        log.error("%s %s failed at %s: %s", cmd.cmd, version or "", stage, error)
        if report_status:
            await self._report(cmd, phase, status_version or version, error=error)
        serving = self._serving_version()
        await self.sink.event(
            Event(
                id=cmd.id,
                cmd=cmd.cmd,
                ok=False,
                error=error,
                detail={"version": version, "phase": phase, "stage": stage, "serving": serving, **detail},
            )
        )
        return False

    async def _report(
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
        await self.sink.ota(self._status)

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
            loop.call_soon_threadsafe(self._spawn_report, cmd, round(pct, 1))

        return report

    def _spawn_report(self, cmd: UpdateModel, pct: float) -> None:
        if self._status.phase == "downloading":
            self._spawn(self._report(cmd, "downloading", cmd.version, progress=pct))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _serving_version(self) -> str:
        return self.pipeline.classifier.bundle.manifest.version

    def _initial_status(self) -> OtaStatus:
        running = self.store.running
        return OtaStatus(
            node=self.node_id,
            ts=round(time.time(), 3),
            phase="active",
            version=running.bundle.manifest.version,
        )
