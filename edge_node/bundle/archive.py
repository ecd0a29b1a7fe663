"""Bundles as ``.tar.gz``: packing, and extraction that writes nothing before it is verified.

``pack`` writes ``manifest.json``, then ``manifest.sig``, then the listed files in name order (and nothing
unlisted). ``extract`` streams through an archive once, in this order:

1. Headers are read one at a time (``tarstream``), each one (directories and extended headers too) counted
   against ``max_members``; unsafe paths, links and devices are refused.
2. Nothing is written until the manifest is trusted. The manifest (at most ``MAX_MANIFEST_BYTES``), its
   signature and, for archives packed before manifest-first order, small files ahead of the manifest (at
   most ``HEAD_BYTES`` in all: ``labels.txt`` sorted before ``manifest.json``) are held in memory. A larger
   file ahead of the manifest is refused with a request to repack with a current ``edge-node model pack``.
3. The signature is checked (``trust.check_signature``), then the manifest parsed, then the caller's
   ``admit`` runs (the updater checks version and serial there), then the manifest's total size is held
   against ``max_total``.
4. Then ``dest`` is created and each file written: it must be listed and appear once, its size (from its
   header, before any data is read) must be the listed one and its sha256 is checked while it streams; it is
   fsynced.
5. At the end every listed file must have been seen. ``manifest.json`` and ``manifest.sig`` are written
   last and every folder is fsynced, so a folder with a manifest is complete and on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_node.bundle.fsutil import fsync_dir
from edge_node.bundle.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE,
    Manifest,
    parse_manifest,
    read_manifest,
)
from edge_node.bundle.tarstream import Member, members
from edge_node.bundle.trust import check_signature
from edge_node.errors import BundleError, BundleIntegrityError

__all__ = ["HEAD_BYTES", "MAX_MEMBERS", "MAX_TOTAL", "Admit", "Extracted", "extract", "pack"]

MAX_MEMBERS = 256  # headers of every kind; a bundle has ~50 files
MAX_TOTAL = 1 << 30  # 1 GiB unpacked
HEAD_BYTES = 1 << 20  # files ahead of the manifest (older archives: labels.txt), held in memory
Admit = Callable[[Manifest], None]  # raises to refuse a verified manifest before anything is written


@dataclass(frozen=True, slots=True)
class Extracted:
    manifest: Manifest
    signed_by: str | None  # the trusted key's id; None when no keys were configured


def pack(directory: Path, out: Path) -> Path:
    """Write the bundle in ``directory`` as a reproducible ``.tar.gz`` in the order ``extract`` needs."""
    manifest, _ = read_manifest(directory)
    signed = [SIGNATURE] if (directory / SIGNATURE).is_file() else []
    with (
        out.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in [MANIFEST, *signed, *sorted(manifest.files)]:
            path = directory / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return out


def extract(
    archive: Path,
    dest: Path,
    *,
    trusted_keys: Sequence[Path] = (),
    require_signature: bool = False,
    admit: Admit | None = None,
    max_members: int = MAX_MEMBERS,
    max_total: int = MAX_TOTAL,
) -> Extracted:
    """Verify and extract ``archive`` into the new folder ``dest`` (created only once the manifest is trusted,
    removed again on any error). The signature rule is ``trust.check_signature``'s; raise BundleError (or a
    subclass) on anything wrong."""
    if dest.exists():
        raise BundleError(f"cannot extract {archive.name} into {dest}: it already exists")
    try:
        job = _Extraction(archive.name, dest, trusted_keys, require_signature, admit, max_total)
        with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            for member in members(stream, max_members=max_members):
                job.take(member)
        return job.finish()
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise BundleError(f"{archive.name} is not a readable .tar.gz bundle: {exc}") from exc
        if isinstance(exc, OSError):
            raise BundleError(f"cannot extract {archive.name} into {dest}: {exc}") from exc
        raise


class _Extraction:
    """One pass over an archive's members: hold until the manifest is trusted, then write what it lists."""

    def __init__(
        self,
        archive: str,
        dest: Path,
        trusted_keys: Sequence[Path],
        require_signature: bool,
        admit: Admit | None,
        max_total: int,
    ) -> None:
        self.archive = archive
        self.dest = dest
        self.trusted_keys = trusted_keys
        self.require_signature = require_signature
        self.admit = admit
        self.max_total = max_total
        self.held: dict[str, bytes] = {}  # read before the manifest was trusted, in archive order
        self.held_bytes = 0  # of files other than the manifest and its signature
        self.manifest: Manifest | None = None  # set once trusted
        self.manifest_bytes = b""
        self.signature: bytes | None = None
        self.signed_by: str | None = None
        self.written: set[str] = set()
        self.folders: set[Path] = {dest}

    def take(self, member: Member) -> None:
        if member.kind == "dir":
            return  # counted by the reader; folders are made for the listed files that need them
        if self.manifest is None and not (MANIFEST in self.held and member.name != SIGNATURE):
            self._hold(member)
            if MANIFEST in self.held and SIGNATURE in self.held:
                self._trust()
            return
        if self.manifest is None:  # the manifest came without a signature after it
            self._trust()
        self._write(member.name, member.size, iter(member.read, b""))

    def finish(self) -> Extracted:
        if self.manifest is None:
            if MANIFEST not in self.held:
                raise BundleError(f"{self.archive} has no {MANIFEST}; it is not a model bundle")
            self._trust()
        assert self.manifest is not None
        missing = sorted(set(self.manifest.files) - self.written)
        if missing:
            raise BundleIntegrityError(
                f"bundle file {missing[0]} is missing from {self.archive}; rebuild or re-pack the bundle"
            )
        _write_durably(self.dest / MANIFEST, [self.manifest_bytes])
        if self.signature is not None:
            _write_durably(self.dest / SIGNATURE, [self.signature])
        for folder in sorted(self.folders, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)
        return Extracted(self.manifest, self.signed_by)

    def _hold(self, member: Member) -> None:
        name = member.name
        if name in self.held:
            raise BundleError(f"{self.archive} has {name} twice; refusing it")
        if name == MANIFEST:
            limit = MAX_MANIFEST_BYTES
        elif name == SIGNATURE:
            limit = MAX_SIGNATURE_BYTES
        else:
            limit = HEAD_BYTES - self.held_bytes
            self.held_bytes += member.size
        if member.size > limit:
            if name in (MANIFEST, SIGNATURE):
                raise BundleError(f"{self.archive}: {name} has {member.size} bytes (at most {limit}); refusing it")
            raise BundleError(
                f"{self.archive} does not start with {MANIFEST} and {SIGNATURE} ({name}, {member.size} bytes, "
                "comes first): a node verifies a bundle before it writes any of it, so it needs the manifest "
                "first; repack the bundle with a current 'edge-node model pack'"
            )
        self.held[name] = b"".join(iter(member.read, b""))

    def _trust(self) -> None:
        """Signature, manifest, the caller's admission, the size cap; then write what was held."""
        raw = self.held.pop(MANIFEST)
        self.signature = self.held.pop(SIGNATURE, None)
        self.signed_by = check_signature(
            raw,
            self.signature,
            trusted_keys=self.trusted_keys,
            require_signature=self.require_signature,
            where=self.archive,
        )
        manifest = parse_manifest(raw, f"{self.archive}: {MANIFEST}")
        if self.admit is not None:
            self.admit(manifest)
        total = sum(entry.size for entry in manifest.files.values())
        if total > self.max_total:
            raise BundleError(f"{self.archive} unpacks to {total} bytes, more than {self.max_total}; refusing it")
        self.manifest, self.manifest_bytes = manifest, raw
        self.dest.mkdir()
        for name, data in self.held.items():
            self._write(name, len(data), [data])
        self.held.clear()

    def _write(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        assert self.manifest is not None
        entry = self.manifest.files.get(name)
        if entry is None or name in (MANIFEST, SIGNATURE):
            raise BundleError(
                f"archive entry {name!r} is not listed in the manifest; refusing the archive "
                "('edge-node model pack' packs only the files the manifest lists)"
            )
        if name in self.written:
            raise BundleError(f"{self.archive} has {name} twice; refusing it")
        if size != entry.size:
            raise BundleIntegrityError(
                f"bundle file {name} has {size} bytes in {self.archive}, the manifest says {entry.size}: the "
                "bundle is corrupt or was modified; rebuild or re-download it"
            )
        target = self.dest.joinpath(*name.split("/"))
        for folder in reversed(target.parents):
            if self.dest in folder.parents and folder not in self.folders:
                folder.mkdir()
                self.folders.add(folder)
        digest = _write_durably(target, chunks)
        if digest != entry.sha256:
            raise BundleIntegrityError(
                f"bundle file {name} does not match its sha256 in the manifest: the bundle is corrupt or "
                "was modified; rebuild or re-download it"
            )
        self.written.add(name)


def _write_durably(path: Path, chunks: Iterable[bytes]) -> str:
    """Write a new file and fsync it; return its sha256."""
    digest = hashlib.sha256()
    with path.open("xb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()
