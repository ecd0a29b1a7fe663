"""The node's bundles on disk, and which one is active: survives kill -9 and power cuts at any point.

Layout under ``root`` (``<state_dir>/ota``)::

    state.json              {"active": SLOT, "previous": SLOT, "min_serial": N, "ids": {...}}, replaced atomically
    bundles/<version>-<sha16>/   installed bundles (the name is built from validated values only)
    staging/                downloads (at most one ``*.part``, kept across a restart to resume) and extraction

A slot is a bundle directory name or ``@factory`` (the read-only bundle given at construction). A new
bundle becomes ``active`` only after it served its health check (:meth:`commit`); until then the state
file still names the old one, so a crash during an update restarts on the last good bundle. ``min_serial`` is
the highest manifest serial committed so far: the updater refuses bundles below it (downgrades), while
``rollback`` to the previous slot stays possible.

Every step is durable before the next one can depend on it: an extracted bundle's files and folders are
fsynced before it is renamed into ``bundles/`` (``bundle.archive.extract``), the rename is followed by an
fsync of both folders, and ``state.json`` is written to a temporary file, fsynced, renamed and its folder
fsynced (``fsutil.atomic_write_bytes``). tests/ota/test_ota_crash.py checks the order of these system calls, and
kills an update before each of its file-system changes in turn.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_node.bundle import Bundle, open_bundle
from edge_node.errors import BundleError, UpdateError
from edge_node.ota.fsutil import atomic_write_bytes, fsync_dir

__all__ = ["FACTORY", "MAX_IDS", "BundleStore", "Running", "Slot", "Source", "slot_name"]

log = logging.getLogger(__name__)

FACTORY = "@factory"
MAX_IDS = 128
Source = Literal["active", "previous", "factory"]
Slot = str  # a bundle directory name under bundles/, or FACTORY
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_SLOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}-[0-9a-f]{16}$")


def slot_name(version: str, sha256: str) -> Slot:
    """The directory name of an installed bundle; raises UpdateError unless both values are safe."""
    if not _VERSION.match(version) or version in (".", ".."):
        raise UpdateError(f"version {version!r} is not a valid bundle version")
    if not _SHA.match(sha256):
        raise UpdateError("sha256 must be 64 lower-case hexadecimal characters")
    return f"{version}-{sha256[:16]}"


def _valid_slot(value: str | None) -> str | None:
    if value is None or value == FACTORY or _SLOT.match(value):
        return value
    raise ValueError(f"invalid slot {value!r}")


class _State(BaseModel):
    model_config = ConfigDict(extra="ignore")

    active: str | None = None
    previous: str | None = None
    pending: dict[str, str | None] | None = None  # {"id", "cmd", "version"} of an update in progress
    min_serial: int = Field(0, ge=0)  # the highest manifest serial committed: updates below it are refused
    ids: dict[str, bool] = Field(default_factory=dict)  # recent command id -> succeeded, oldest first

    def checked(self) -> _State:
        _valid_slot(self.active)
        _valid_slot(self.previous)
        return self


@dataclass(frozen=True, slots=True)
class Running:
    """The bundle the node serves right now and where start-up (or the last update) found it."""

    slot: Slot
    source: Source
    bundle: Bundle


class BundleStore:
    """Installed bundles plus the active/previous pointers; one instance per node process."""

    def __init__(self, root: Path, factory: Path | None) -> None:
        self.root = root
        self.factory = factory
        self.bundles = root / "bundles"
        self.staging = root / "staging"
        self.state_path = root / "state.json"
        for folder in (self.root, self.bundles, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        self._state = self._load()
        self._running: Running | None = None
        self.startup_errors: list[str] = []  # why start-up skipped the active (or previous) bundle
        self.interrupted: dict[str, str | None] | None = None  # the update a restart cut short

    # --- start-up ---------------------------------------------------------------------------------------

    def startup(self) -> tuple[Bundle, str]:
        """Open the active bundle, else the previous one, else the factory bundle; clean up leftovers.

        Returns the bundle and where it came from: "active", "previous" or "factory".
        """
        self._clean_staging()
        self._settle_interrupted()
        candidates: list[tuple[Source, Slot | None]] = [
            ("active", self._state.active),
            ("previous", self._state.previous),
            ("factory", FACTORY),
        ]
        errors = self.startup_errors
        for source, slot in candidates:
            if slot is None:
                continue
            try:
                bundle = self.open_slot(slot)
            except BundleError as exc:
                log.error("%s bundle %s is unusable: %s", source, slot, exc)
                errors.append(f"{source} ({slot}): {exc}")
                continue
            name: Source = "factory" if slot == FACTORY else source
            self._running = Running(slot, name, bundle)
            if source != "active" and self._state.active is not None:
                log.warning("started on the %s bundle %s because the active one failed", name, slot)
                self._settle_fallback(slot)
            self.gc()
            return bundle, name
        raise BundleError("no usable model bundle: " + "; ".join(errors or ["no factory bundle configured"]))

    def _settle_interrupted(self) -> None:
        """An update that was running when the process died counts as failed, so that a redelivered
        command cannot crash-loop the node."""
        pending = self._state.pending
        if pending is None:
            return
        self.interrupted = pending
        log.warning("the update to %s (id %s) was interrupted by a restart", pending.get("version"), pending.get("id"))
        ids = dict(self._state.ids)
        if pending.get("id"):
            ids[str(pending["id"])] = False
        self._write(pending=None, ids=ids)

    def _settle_fallback(self, running: Slot) -> None:
        """Start-up skipped unusable bundles: make the state say what runs, with the next bundle down (the
        factory one) as the rollback target, so neither a restart nor ``rollback`` returns to a broken bundle."""
        previous = FACTORY if running != FACTORY and self.factory is not None else None
        self._write(active=running, previous=previous)

    def _clean_staging(self) -> None:
        """Drop extraction folders and temp files from an interrupted update, and every partial download but
        the newest (the one an interrupted update may resume)."""
        partials = sorted(
            (p for p in self.staging.iterdir() if p.is_file() and p.name.endswith(".part")),
            key=lambda p: p.stat().st_mtime_ns,
        )
        for path in self.staging.iterdir():
            if partials and path == partials[-1]:
                continue
            _remove(path)
        for tmp in self.root.glob(f".{self.state_path.name}.*.tmp"):  # atomic_write_bytes cut short
            tmp.unlink(missing_ok=True)

    # --- queries ----------------------------------------------------------------------------------------

    @property
    def running(self) -> Running:
        if self._running is None:
            raise UpdateError("the bundle store has not started; call startup() first")
        return self._running

    @property
    def previous(self) -> Slot | None:
        """Where ``rollback`` goes: the state's previous slot (never the running one)."""
        prev = self._state.previous
        return prev if prev != self.running.slot else None

    def path_of(self, slot: Slot) -> Path:
        if slot == FACTORY:
            if self.factory is None:
                raise BundleError("no factory bundle is configured")
            return self.factory
        _valid_slot(slot)
        return self.bundles / slot

    def has(self, slot: Slot) -> bool:
        return slot == FACTORY or (self.bundles / slot).is_dir()

    def open_slot(self, slot: Slot) -> Bundle:
        """Open and hash-check an installed bundle (signatures were checked when it was installed)."""
        return open_bundle(self.path_of(slot), unpack_dir=self.root / "factory")

    @property
    def min_serial(self) -> int:
        """The highest manifest serial this node has committed; an update below it is a downgrade."""
        return self._state.min_serial

    def outcome(self, command_id: str) -> bool | None:
        """True/False if a command with this id already ran (and how it ended), else None."""
        return self._state.ids.get(command_id)

    # --- changes ----------------------------------------------------------------------------------------

    def install(self, unpacked: Path, slot: Slot) -> Path:
        """Move a verified bundle from staging to ``bundles/<slot>`` (an atomic rename) and return it."""
        target = self.bundles / slot
        if slot in self._protected():
            raise UpdateError(f"bundle {slot} is already installed as active or previous")
        _remove(target)
        unpacked.rename(target)  # its files and folders were fsynced when they were extracted
        fsync_dir(self.bundles)
        fsync_dir(unpacked.parent)
        return target

    def commit(self, slot: Slot, bundle: Bundle) -> None:
        """Make ``slot`` active and what was running the previous one; raise ``min_serial`` to its serial."""
        old = self.running.slot
        self._write(active=slot, previous=old, min_serial=max(self._state.min_serial, bundle.manifest.serial))
        self._running = Running(slot, "factory" if slot == FACTORY else "active", bundle)
        log.info("model bundle %s is now active (previous: %s)", slot, old)
        self.gc()

    def discard(self, slot: Slot) -> None:
        """Delete an installed bundle that failed activation."""
        if slot in self._protected() or slot == FACTORY:
            return
        _remove(self.bundles / slot)

    def mark_pending(self, command_id: str | None, cmd: str = "", version: str = "") -> None:
        """Record the update in progress (or, with None, that none is), for :meth:`startup`."""
        self._write(pending={"id": command_id, "cmd": cmd, "version": version} if cmd else None)

    def keep_one_partial(self, part: Path) -> None:
        """Before a download into ``part``: delete every other partial download, so at most one stays."""
        for path in self.staging.glob("*.part"):
            if path != part:
                log.info("removing the partial download %s of an earlier update", path.name)
                _remove(path)

    def clear_staging(self, *paths: Path) -> None:
        """Delete staging files or folders (only below ``staging/``)."""
        for path in paths:
            if self.staging in path.parents:
                _remove(path)

    def remember(self, command_id: str, ok: bool) -> None:
        """Persist that a command id ran, so a redelivered command is not run twice."""
        ids = dict(self._state.ids)
        ids.pop(command_id, None)
        ids[command_id] = ok
        while len(ids) > MAX_IDS:
            ids.pop(next(iter(ids)))
        self._write(ids=ids)

    def gc(self) -> None:
        """Remove installed bundles other than active, previous and the running one."""
        keep = self._protected()
        for path in self.bundles.iterdir():
            if path.name not in keep:
                log.info("removing old bundle %s", path.name)
                _remove(path)

    # --- internals --------------------------------------------------------------------------------------

    def _protected(self) -> set[str]:
        keep = {s for s in (self._state.active, self._state.previous) if s is not None}
        if self._running is not None:
            keep.add(self._running.slot)
        return keep

    def _load(self) -> _State:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return _State()
        except OSError as exc:
            log.error("cannot read %s (%s); starting from the factory bundle", self.state_path, exc)
            return _State()
        try:
            return _State.model_validate_json(raw).checked()
        except (ValidationError, ValueError) as exc:
            log.error("%s is corrupt (%s); starting from the factory bundle", self.state_path, exc)
            return _State()

    def _write(self, **changes: object) -> None:
        state = self._state.model_copy(update=changes)
        atomic_write_bytes(self.state_path, json.dumps(state.model_dump(), indent=2).encode() + b"\n")
        self._state = state


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
