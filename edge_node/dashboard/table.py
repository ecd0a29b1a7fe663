"""The fleet table: one page of compact rows, searched and paged on the server. Pure: time is passed in.

At 10,000 nodes the card view's full picture (charts, events, every section) is tens of megabytes and as many
DOM nodes; the table sends and the browser draws only the rows on screen (one page, 100 by default), each a
few fields of the node's newest heartbeat and state. The sorted order of the ids is kept until a node is
added, so a page costs one pass over the ids that match, not a sort.
"""

from __future__ import annotations

from typing import Any

from edge_node.dashboard.board import Board
from edge_node.fleet.decode import JsonDict

__all__ = ["MAX_PAGE_SIZE", "PROBLEMS", "FleetTable"]

MAX_PAGE_SIZE = 500
PROBLEMS = ("stale", "offline", "unknown")


class FleetTable:
    """Pages of the board's nodes; holds only the sorted ids between calls."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self._ids: list[str] = []

    def _sorted(self) -> list[str]:
        if len(self._ids) != len(self.board.nodes):  # nodes are only ever added
            self._ids = sorted(self.board.nodes)
        return self._ids

    def page(self, query: str = "", *, page: int = 0, size: int = 100, problems: bool = False, wall: float,
             now: float) -> JsonDict:  # fmt: skip
        """Rows ``page * size`` to ``(page + 1) * size`` of the nodes whose id contains ``query`` (any case);
        ``problems``: only nodes not online. ``page`` past the end gives the last page."""
        size = max(1, min(size, MAX_PAGE_SIZE))
        needle = query.strip().lower()
        nodes = self.board.nodes
        matching = [
            name
            for name in self._sorted()
            if (not needle or needle in name.lower())
            and (not problems or (nodes[name].shown or nodes[name].status) in PROBLEMS)
        ]
        pages = max(1, -(-len(matching) // size))
        page = max(0, min(page, pages - 1))
        rows = [self._row(name, wall, now) for name in matching[page * size : (page + 1) * size]]
        return {
            "ts": round(wall, 3),
            "matching": len(matching),
            "page": page,
            "pages": pages,
            "size": size,
            "rows": rows,
            "summary": self.board.summary(),
        }

    def _row(self, name: str, wall: float, now: float) -> JsonDict:
        node = self.board.nodes[name]
        beat: dict[str, Any] = node.sections.get("heartbeat", {})
        state: dict[str, Any] = node.sections.get("state", {})
        pred: dict[str, Any] = node.sections.get("predictions", {})
        model = state.get("model", {}).get("version") or beat.get("model_version")
        heard = max((node.at[leaf] for leaf in ("heartbeat", "predictions", "state") if leaf in node.at), default=None)
        return {
            "node": name,
            "status": node.shown or node.status,
            "mode": state.get("mode") or beat.get("mode"),
            "fps": beat.get("fps", pred.get("fps")),
            "inference_ms": beat.get("inference_ms_avg"),
            "cpu": beat.get("cpu_percent"),
            "model": model,
            "server": beat.get("server"),
            "failovers": beat.get("failovers"),
            "heard_s": None if heard is None else round(now - heard, 1),
        }
