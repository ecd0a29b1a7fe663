"""How the node plugs OTA in: the bundle store it starts from."""

from __future__ import annotations

from pathlib import Path

from edge_node.config import Settings
from edge_node.ota.store import BundleStore

__all__ = ["open_store"]


def open_store(settings: Settings, factory: Path) -> BundleStore:
    """The store under ``<state_dir>/ota`` with ``factory`` (EDGE_MODEL__BUNDLE or the demo bundle) as the
    bundle of last resort; call ``startup()`` on it to get the bundle to run."""
    return BundleStore(settings.state_dir / "ota", factory)
