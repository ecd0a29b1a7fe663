"""Model bundles: a manifest, ONNX files and labels, optionally signed. See docs/model-bundles.md."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_node.bundle.archive import MAX_TOTAL, Admit, extract
from edge_node.bundle.manifest import MANIFEST, MAX_SIGNATURE_BYTES, SIGNATURE, Manifest, read_manifest, verify_files
from edge_node.bundle.trust import check_signature
from edge_node.errors import BundleError
from edge_node.runtimes import Runtime

__all__ = ["MANIFEST", "SIGNATURE", "Bundle", "Manifest", "extract_bundle", "open_bundle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle on disk whose files were checked against its manifest."""

    path: Path
    manifest: Manifest
    labels: tuple[str, ...]
    signed_by: str | None = None

    def model_file(self, resolution: int, precision: str, runtime: Runtime = "onnxruntime") -> Path:
        return self.path / self.manifest.variant(resolution, precision, runtime).file


def open_bundle(
    path: Path,
    *,
    trusted_keys: Sequence[Path] = (),
    require_signature: bool = False,
    unpack_dir: Path | None = None,
) -> Bundle:
    """Open a bundle directory or ``.tar.gz``: check the signature, then every file.

    With ``trusted_keys`` a signature is always required (``trust.check_signature``); without, only
    ``require_signature`` refuses. An archive is extracted first, with the same checks, by ``archive.extract``.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        base = unpack_dir or path.parent
        target = base / f".{path.name}.{digest}.d"
        if not (target / MANIFEST).is_file():  # extract writes the manifest last: without it, it is partial
            shutil.rmtree(target, ignore_errors=True)
            base.mkdir(parents=True, exist_ok=True)
            extract(path, target, trusted_keys=trusted_keys, require_signature=require_signature)
        path = target
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist; build one with 'edge-node model build'")
    manifest, raw = read_manifest(path)
    signed_by = check_signature(
        raw,
        _signature(path),
        trusted_keys=trusted_keys,
        require_signature=require_signature,
        where=str(path),
    )
    verify_files(path, manifest)
    return _assemble(path, manifest, signed_by)


def extract_bundle(
    archive: Path,
    dest: Path,
    *,
    trusted_keys: Sequence[Path] = (),
    require_signature: bool = False,
    admit: Admit | None = None,
    max_total: int = MAX_TOTAL,
) -> Bundle:
    """Verify and extract ``archive`` into the new folder ``dest`` (``archive.extract``: nothing is written
    before the signature and ``admit`` accepted the manifest; files are hashed while they stream)."""
    done = extract(
        archive, dest, trusted_keys=trusted_keys, require_signature=require_signature, admit=admit, max_total=max_total
    )
    return _assemble(dest, done.manifest, done.signed_by)


def _signature(directory: Path) -> bytes | None:
    path = directory / SIGNATURE
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        return fh.read(MAX_SIGNATURE_BYTES + 1)


def _assemble(path: Path, manifest: Manifest, signed_by: str | None) -> Bundle:
    """The Bundle for a folder whose files were checked: its labels must match the manifest's class count."""
    labels = tuple(line.strip() for line in (path / manifest.labels).read_text().splitlines() if line.strip())
    if len(labels) != manifest.num_classes:
        raise BundleError(f"{manifest.labels} has {len(labels)} labels, manifest says {manifest.num_classes} classes")
    log.debug("opened bundle %s %s from %s", manifest.name, manifest.version, path)
    return Bundle(path=path, manifest=manifest, labels=labels, signed_by=signed_by)
