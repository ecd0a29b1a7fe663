"""Sign a bundle directory or ``.tar.gz`` in place (an archive is extracted, signed and re-packed atomically),
optionally setting its serial first (the manifest's downgrade order, docs/model-bundles.md)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edge_node.bundle.archive import extract, pack
from edge_node.bundle.manifest import MANIFEST, Manifest, read_manifest, verify_files
from edge_node.bundle.signing import load_private_key, sign_bundle
from edge_node.errors import BundleError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["is_archive", "sign_path"]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz"))


def sign_path(bundle: Path, key_path: Path, *, serial: int | None = None) -> Manifest:
    """Check the bundle's files, set ``serial`` when given, then write the signature; return the signed manifest."""
    key = load_private_key(key_path)
    if bundle.is_dir():
        return _sign_folder(bundle, key, serial)
    if not is_archive(bundle):
        raise BundleError(f"{bundle} is neither a bundle directory nor a .tar.gz")
    with tempfile.TemporaryDirectory(prefix=".sign-", dir=bundle.parent) as tmp:
        directory = Path(tmp) / "bundle"
        extract(bundle, directory)  # no keys: an old signature is replaced; files are hashed as they are extracted
        manifest = _sign_folder(directory, key, serial)
        staged = Path(tmp) / bundle.name
        pack(directory, staged)
        os.replace(staged, bundle)
    return manifest


def _sign_folder(directory: Path, key: Ed25519PrivateKey, serial: int | None) -> Manifest:
    manifest, _ = read_manifest(directory)
    verify_files(directory, manifest)  # never vouch for files that don't match the manifest
    if serial is not None and serial != manifest.serial:
        manifest = Manifest.model_validate({**manifest.model_dump(), "serial": serial})
        (directory / MANIFEST).write_bytes(manifest.to_bytes())
    sign_bundle(directory, key)
    return manifest
