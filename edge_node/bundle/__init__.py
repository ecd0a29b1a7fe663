"""Model bundles: a manifest, ONNX files and labels, optionally signed. See docs/model-bundles.md."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_node.bundle.archive import unpack
from edge_node.bundle.manifest import MANIFEST, SIGNATURE, Manifest, read_manifest, verify_files
from edge_node.errors import BundleError
from edge_node.runtimes.base import Runtime

__all__ = ["MANIFEST", "SIGNATURE", "Bundle", "Manifest", "open_bundle"]

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
    """Open a bundle directory or ``.tar.gz``: check the signature (when keys are given), then every file.

    With ``trusted_keys`` a signature is checked whenever present and required when ``require_signature``.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        base = unpack_dir or path.parent
        target = base / f".{path.name}.{digest}.d"
        if not (target / MANIFEST).is_file():
            unpack(path, target)
        path = target
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist; build one with 'edge-node model build'")
    manifest, _ = read_manifest(path)
    signed_by = None
    if trusted_keys:
        # Imported here: cryptography costs ~8 MB of RSS that a node without trusted keys never needs.
        from edge_node.bundle.signing import key_id, load_public_keys, verify_bundle_signature

        keys = load_public_keys(trusted_keys)
        if (path / SIGNATURE).is_file() or require_signature:
            signed_by = key_id(verify_bundle_signature(path, keys))
    elif require_signature:
        raise BundleError("a signature is required but no trusted keys are configured")
    verify_files(path, manifest)
    labels = tuple(line.strip() for line in (path / manifest.labels).read_text().splitlines() if line.strip())
    if len(labels) != manifest.num_classes:
        raise BundleError(f"{manifest.labels} has {len(labels)} labels, manifest says {manifest.num_classes} classes")
    log.debug("opened bundle %s %s from %s", manifest.name, manifest.version, path)
    return Bundle(path=path, manifest=manifest, labels=labels, signed_by=signed_by)
