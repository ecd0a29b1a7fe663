"""Operator tools: ``ctl``, ``monitor``, ``simulate`` and how every viewer reads the fleet.

What other packages use: :class:`FleetView` (the newest payload per topic, rows on demand) and
:mod:`~edge_node.fleet.decode` (the one lenient payload decoder, shared with the web dashboard).
"""

from __future__ import annotations

from edge_node.fleet import decode
from edge_node.fleet.view import FleetView, NodeRow

__all__ = ["FleetView", "NodeRow", "decode"]
