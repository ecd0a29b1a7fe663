"""Sign a bundle directory or ``.tar.gz`` in place (an archive is unpacked, signed and re-packed atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edge_node.bundle.archive import pack, unpack
from edge_node.bundle.manifest import read_manifest, verify_files
from edge_node.bundle.signing import load_private_key, sign_bundle
from edge_node.errors import BundleError

__all__ = ["is_archive", "sign_path"]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz"))


def sign_path(bundle: Path, key_path: Path) -> Path:
    """Check the bundle's files, then write its signature; return the signed directory or archive."""
    key = load_private_key(key_path)
    if bundle.is_dir():
        manifest, _ = read_manifest(bundle)
        verify_files(bundle, manifest)  # never vouch for files that don't match the manifest
        sign_bundle(bundle, key)
        return bundle
    if not is_archive(bundle):
        raise BundleError(f"{bundle} is neither a bundle directory nor a .tar.gz")
    with tempfile.TemporaryDirectory(prefix=".sign-", dir=bundle.parent) as tmp:
        directory = unpack(bundle, Path(tmp) / "bundle")
        manifest, _ = read_manifest(directory)
        verify_files(directory, manifest)
        sign_bundle(directory, key)
        staged = Path(tmp) / bundle.name
        pack(directory, staged)
        os.replace(staged, bundle)
    return bundle
