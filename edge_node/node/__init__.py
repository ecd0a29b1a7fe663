"""The running node: ``Node`` wires capture, the pipeline, MQTT, OTA and self-supervision, and ``runner`` is
``edge-node run``. The modules beside them are the node's glue (commands, the mapping from results to wire
messages, the publish policy, the snapshot JPEG, health, Home Assistant discovery, systemd notifications).

The names below are imported on first use (PEP 562), so ``import edge_node.node.runner`` from the CLI does not
load the vision stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_node.node.app import Node
    from edge_node.node.builder import build
    from edge_node.node.jpeg import DISABLED, Jpeg, encode_snapshot
    from edge_node.node.runner import register, resolve_bundle, run
    from edge_node.node.telemetry import peak_rss_mb, rss_mb

__all__ = [
    "DISABLED",
    "Jpeg",
    "Node",
    "build",
    "encode_snapshot",
    "peak_rss_mb",
    "register",
    "resolve_bundle",
    "rss_mb",
    "run",
]

_HOME = {
    "Node": "app",
    "build": "builder",
    "DISABLED": "jpeg",
    "Jpeg": "jpeg",
    "encode_snapshot": "jpeg",
    "register": "runner",
    "resolve_bundle": "runner",
    "run": "runner",
    "peak_rss_mb": "telemetry",
    "rss_mb": "telemetry",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
