"""Ed25519 signatures over the exact manifest bytes (``manifest.sig`` beside ``manifest.json``).

Keys are stored as PEM files: PKCS#8 for the private key, SubjectPublicKeyInfo for ``KEY.pub``.
A node trusts a list of public keys, so that keys can be rotated.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_node.bundle.manifest import MANIFEST, SIGNATURE
from edge_node.errors import SignatureError

__all__ = [
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_keys",
    "sign_bundle",
    "sign_bytes",
    "verify_bytes",
]


def generate_keypair(path: Path) -> Path:
    """Write a new private key to ``path`` (mode 0600) and its public key to ``path.pub``."""
    if path.exists():
        raise SignatureError(f"{path} already exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(public)
    return pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key; make one with 'edge-node model keygen'")
    return key


def load_public_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SignatureError(f"cannot load trusted public key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"trusted key {path} is not an Ed25519 public key")
        keys.append(key)
    return keys


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint for logs and error messages."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b32encode(raw).decode()[:12].lower()


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return base64.b64encode(key.sign(data)) + b"\n"


def verify_bytes(keys: Sequence[Ed25519PublicKey], data: bytes, signature: bytes) -> Ed25519PublicKey:
    """Return the trusted key that made ``signature``; raise SignatureError otherwise."""
    if not keys:
        raise SignatureError("no trusted public keys are configured")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except ValueError as exc:
        raise SignatureError(f"{SIGNATURE} is not valid base64") from exc
    for key in keys:
        try:
            key.verify(raw, data)
        except InvalidSignature:
            continue
        return key
    raise SignatureError(
        f"{SIGNATURE} does not verify with any of the {len(keys)} trusted key(s) "
        f"({', '.join(key_id(k) for k in keys)}): the bundle was modified or signed by an unknown key"
    )


def sign_bundle(directory: Path, key: Ed25519PrivateKey) -> Path:
    """Sign ``manifest.json`` exactly as it is on disk."""
    data = (directory / MANIFEST).read_bytes()
    out = directory / SIGNATURE
    out.write_bytes(sign_bytes(key, data))
    return out
