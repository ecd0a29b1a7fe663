"""Rich rendering of fleet rows: one table, problems first, stale heartbeats highlighted."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from edge_node.fleet.view import NodeRow

__all__ = ["render", "summarize"]


def summarize(rows: Sequence[NodeRow]) -> dict[str, int]:
    return {
        "total": len(rows),
        "online": sum(r.online for r in rows),
        "offline": sum(r.status == "offline" for r in rows),
        "unknown": sum(r.status == "unknown" for r in rows),
        "stale": sum(r.stale for r in rows),
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _status(row: NodeRow) -> Text:
    if row.status == "offline":
        return Text("offline", style="bold red")
    if row.stale:
        return Text("stale", style="bold yellow")
    if row.status == "online":
        return Text("online", style="green")
    return Text("unknown", style="dim")


def render(
    rows: Sequence[NodeRow], *, prefix: str, rate: float | None = None, limit: int | None = None
) -> RenderableType:
    """Header with fleet counts, then one row per node; with ``limit`` only the first rows (problems first)."""
    counts = summarize(rows)
    shown = rows if limit is None else rows[: max(0, limit)]
    head = Text.assemble(
        ("GhostPi fleet ", "bold"),
        (f"{prefix}/+  ", "dim"),
        (f"{counts['online']} online", "green"),
        "  ",
        (f"{counts['offline']} offline", "red" if counts["offline"] else "dim"),
        "  ",
        (f"{counts['stale']} stale", "yellow" if counts["stale"] else "dim"),
        (f"  {counts['total']} nodes", "dim"),
        (f"  {rate:,.0f} msg/s" if rate is not None else "", "dim"),
    )
    table = Table(expand=True, pad_edge=False, show_edge=False, header_style="bold")
    for name, justify in (
        ("node", "left"),
        ("status", "left"),
        ("label", "left"),
        ("conf", "right"),
        ("fps", "right"),
        ("inf ms", "right"),
        ("mode", "left"),
        ("res", "right"),
        ("model", "left"),
        ("hb age", "right"),
        ("server", "left"),
        ("camera", "left"),
        ("pipeline", "left"),
        ("denied", "right"),
        ("last event", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in shown:
        style = "red" if row.status == "offline" else "yellow" if row.stale else None
        camera = Text(row.camera or "-", style="yellow" if row.camera not in (None, "ok") else "")
        pipeline = Text(row.pipeline or "-", style="red" if row.pipeline in ("stalled", "failed") else "")
        denied = Text(str(row.denied) if row.denied else "-", style="bold red" if row.denied else "")
        table.add_row(
            row.node,
            _status(row),
            row.label or "-",
            _num(row.confidence, ".2f"),
            _num(row.fps, ".1f"),
            _num(row.inference_ms, ".1f"),
            row.mode or "-",
            _num(row.resolution, "d"),
            row.model_version or "-",
            _num(row.heartbeat_age_s, ".0f") + ("s" if row.heartbeat_age_s is not None else ""),
            (row.server or "-") + (f" ({row.failovers} failovers)" if row.failovers else ""),
            camera,
            pipeline,
            denied,
            row.last_event or "",
            style=style,
        )
    if len(shown) < len(rows):
        return Group(head, table, Text(f"... {len(rows) - len(shown)} more nodes (problems are listed first)", "dim"))
    return Group(head, table)
