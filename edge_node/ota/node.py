"""How the node plugs OTA in: the bundle store it starts from, and a sink onto its MQTT publishers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge_node.config import Settings
from edge_node.messages import Event, OtaStatus
from edge_node.ota.store import BundleStore

__all__ = ["NodeSink", "open_store"]


def open_store(settings: Settings, factory: Path) -> BundleStore:
    """The store under ``<state_dir>/ota`` with ``factory`` (EDGE_MODEL__BUNDLE or the demo bundle) as the
    bundle of last resort; call ``startup()`` on it to get the bundle to run."""
    return BundleStore(settings.state_dir / "ota", factory)


class NodeSink:
    """OtaSink over the node's synchronous publishers (events: QoS 1; ota: QoS 1, retained)."""

    def __init__(self, emit: Callable[[Event], None], publish_ota: Callable[[OtaStatus], None]) -> None:
        self._emit = emit
        self._publish_ota = publish_ota

    async def event(self, ev: Event) -> None:
        self._emit(ev)

    async def ota(self, st: OtaStatus) -> None:
        self._publish_ota(st)
