"""The one rule for whether a manifest is trusted, used for bundle folders and archives alike.

With trusted keys configured, a signature is required and must verify with one of them: nothing (not
``EDGE_OTA__ALLOW_UNSIGNED_MODELS``) lets an unsigned bundle past configured keys, or deleting
``manifest.sig`` would bypass them. Without keys, nothing can be checked, so only a caller that does not
require a signature (a lab node that allows unsigned models, or opening a local bundle) gets past.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge_node.bundle.manifest import SIGNATURE
from edge_node.errors import BundleError, SignatureError

__all__ = ["check_signature"]


def check_signature(
    manifest: bytes, signature: bytes | None, *, trusted_keys: Sequence[Path], require_signature: bool, where: str
) -> str | None:
    """Return the id of the trusted key that signed ``manifest`` (None when no keys are configured and no
    signature is required); raise SignatureError or BundleError otherwise. ``where`` names the bundle."""
    if not trusted_keys:
        if require_signature:
            raise BundleError("a signature is required but no trusted keys are configured")
        return None
    if signature is None:
        raise SignatureError(
            f"bundle {where} is not signed ({SIGNATURE} is missing); trusted keys are configured, so every "
            "bundle must be signed by one of them: sign it with 'edge-node model sign'"
        )
    # Imported here: cryptography costs ~8 MB of RSS that a node without trusted keys never needs.
    from edge_node.bundle.signing import key_id, load_public_keys, verify_bytes

    return key_id(verify_bytes(load_public_keys(trusted_keys), manifest, signature))
