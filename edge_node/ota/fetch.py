"""Fetch and verify: from an ``update_model`` command to a verified bundle installed in its store slot.

Download (resumable, size and sha256 checked) -> the manifest's signature, version and serial, read from the
archive's first members before anything is written -> only the listed files extracted, at their listed sizes
and hashes -> moved into ``bundles/<slot>``. An installed copy of the same slot is reused (if it is still no
downgrade). Nothing here swaps or commits a model: that is :mod:`edge_node.ota.activate`'s job, and the
updater's to decide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from edge_node.bundle import Bundle, Manifest, extract_bundle
from edge_node.bundle.archive import MAX_TOTAL, Admit
from edge_node.config import OtaConfig
from edge_node.errors import EdgeError, UpdateError
from edge_node.ota.download import Interrupter, Progress, download, partial_path
from edge_node.ota.store import BundleStore, Slot
from edge_node.wire import OtaPhase, UpdateModel

__all__ = ["Fetcher", "StepFailed", "check_serial"]

log = logging.getLogger(__name__)


class StepFailed(UpdateError):
    """An update step failed; ``stage`` says which (download, verify, warmup, health)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def check_serial(store: BundleStore, manifest: Manifest) -> None:
    """Refuse a bundle whose serial is below the newest one this node has committed (no downgrades)."""
    floor = store.min_serial
    if manifest.serial >= floor:
        return
    has = f"serial {manifest.serial}" if manifest.serial else "no serial (0)"
    raise UpdateError(
        f"bundle {manifest.version} has {has}, below {floor}, the newest serial this node has committed: "
        "older bundles are refused, so that a replaced model cannot be brought back by an update. To go back "
        "one step send 'rollback'; to install this model again, sign it with a higher serial "
        "('edge-node model sign BUNDLE --key KEY --serial N') and publish the new archive"
    )


class Fetcher:
    """Downloads, verifies and installs bundles for the updater; one fetch at a time (the updater's rule)."""

    def __init__(
        self,
        cfg: OtaConfig,
        store: BundleStore,
        *,
        cancel: threading.Event,
        interrupter: Interrupter,
        backoff: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self._cancel = cancel  # set: the download stops
        self._interrupter = interrupter
        self.backoff = backoff

    async def fetch(
        self, cmd: UpdateModel, slot: Slot, *, phase: Callable[[OtaPhase], None], progress: Progress
    ) -> Bundle:
        """The verified bundle of ``cmd`` in ``bundles/<slot>``; ``phase`` hears "downloading" and "verifying",
        ``progress`` the download's bytes (from its thread). Raises StepFailed."""
        if self.store.has(slot):
            try:
                installed = await asyncio.to_thread(self.store.open_slot, slot)
            except EdgeError as exc:
                log.warning("installed copy of %s is unusable (%s); downloading it again", slot, exc)
            else:
                try:
                    check_serial(self.store, installed.manifest)
                except UpdateError as exc:
                    raise StepFailed("verify", str(exc)) from exc
                return installed
        archive = self.store.staging / f"{cmd.sha256}.tar.gz"
        await asyncio.to_thread(self.store.keep_one_partial, partial_path(archive))
        phase("downloading")
        try:
            await asyncio.to_thread(
                download,
                cmd.url,
                archive,
                sha256=cmd.sha256,
                size=cmd.size,
                cfg=self.cfg,
                progress=progress,
                cancel=self._cancel,
                interrupter=self._interrupter,
                backoff=self.backoff,
            )
        except EdgeError as exc:
            raise StepFailed("download", str(exc)) from exc
        phase("verifying")
        staged = self.store.staging / f"unpack-{slot}"
        try:
            bundle = await asyncio.to_thread(self._verify, archive, staged, cmd.version)
            final = await asyncio.to_thread(self.store.install, staged, slot)
        except EdgeError as exc:
            raise StepFailed("verify", str(exc)) from exc
        finally:
            await asyncio.to_thread(self.store.clear_staging, archive, staged)
        return dataclasses.replace(bundle, path=final)

    def _verify(self, archive: Path, staged: Path, version: str) -> Bundle:
        """Check the manifest's signature, version and serial, then extract the files it lists (verified as they
        stream); nothing is written before the manifest passed (``bundle.archive.extract``)."""
        self.store.clear_staging(staged)
        bundle = extract_bundle(
            archive,
            staged,
            trusted_keys=self.cfg.trusted_keys,  # with keys, a signature is always required (bundle/trust.py)
            require_signature=not self.cfg.allow_unsigned_models,
            admit=self._admit(version),
            max_total=min(MAX_TOTAL, 4 * self.cfg.max_bundle_bytes),
        )
        log.info("bundle %s %s verified (signed by %s)", bundle.manifest.name, version, bundle.signed_by)
        return bundle

    def _admit(self, version: str) -> Admit:
        """What a trusted manifest must also be before any of its files is written: ``version``, not a downgrade."""

        def admit(manifest: Manifest) -> None:
            if manifest.version != version:
                raise UpdateError(f"the bundle's manifest says version {manifest.version}, the command said {version}")
            check_serial(self.store, manifest)

        return admit
