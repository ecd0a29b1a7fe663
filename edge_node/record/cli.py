"""``edge-node record`` and ``edge-node history``; settings from ``EDGE_RECORD__*`` (docs/history.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

from edge_node.config import load_settings
from edge_node.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from edge_node.record.query import TimeRange
    from edge_node.record.store import Store

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = sub.add_parser("record", help="write what the fleet publishes to SQLite or PostgreSQL (extra 'record')")
    record.add_argument("--prefix", help="topic prefix (default: EDGE_TOPIC_PREFIX or 'ghostpi')")
    record.set_defaults(handler=_record)

    history = sub.add_parser("history", help="what the recorder saw: labels, series, offline spans, events, OTA")
    history.add_argument("--node", help="one node (default: the whole fleet)")
    history.add_argument("--since", help="how far back: 10m, 24h, 7d (default 1h; 24h for detections)")
    history.add_argument("--until", help="end of the range, as far back as --since takes (default: now)")
    history.add_argument("--json", action="store_true", help="print JSON instead of tables")
    history.add_argument("--hourly", action="store_true", help="also predictions per hour (and label with --node)")
    history.set_defaults(handler=_history)
    what = history.add_subparsers(dest="what", metavar="WHAT")
    detections = what.add_parser("detections", help="watch-rule detections, newest first (open ones included)")
    # SUPPRESS: an option given before ``detections`` is not overwritten by this parser's default
    detections.add_argument("--node", default=argparse.SUPPRESS, help="one node (default: the whole fleet)")
    detections.add_argument("--rule", help="one watch rule, by name")
    detections.add_argument("--since", default=argparse.SUPPRESS, help="how far back: 10m, 24h, 7d (default 24h)")
    detections.add_argument("--until", default=argparse.SUPPRESS, help="end of the range (default: now)")
    detections.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    detections.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    detections.set_defaults(handler=_detections)


def _need_extra() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("edge-node record with PostgreSQL", "record") from exc


def _record(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.record.dsn is not None:
        _need_extra()
    if settings.record.nats_servers:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("edge-node record from NATS", "record") from exc
    from edge_node.record.recorder import run_recorder

    return run_recorder(settings.record, settings.mqtt, args.prefix or settings.topic_prefix, settings.state_dir)


def _range(args: argparse.Namespace, since: str) -> TimeRange:
    from edge_node.record.query import TimeRange, parse_duration

    now = time.time()
    until = now - parse_duration(args.until) if args.until else now
    return TimeRange(until - parse_duration(args.since or since), until, args.node)


def _open() -> Store:
    from edge_node.record.store import open_store

    settings = load_settings()
    if settings.record.dsn is not None:
        _need_extra()
    return open_store(settings.record, settings.state_dir, create=False)


def _history(args: argparse.Namespace) -> int:
    from edge_node.record.query import History

    r = _range(args, "1h")
    store = _open()
    try:
        history = History(store)
        report = history.report(r)
        if args.hourly:
            report["hourly"] = (
                [{"ts": h, "label": label, "count": n} for h, label, n in history.hourly_labels(r)]
                if r.node is not None
                else [{"ts": h, "count": n} for h, n in history.hourly_counts(r)]
            )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        _print_tables(report)
    return 0


def _detections(args: argparse.Namespace) -> int:
    from edge_node.record.query import History

    if args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    r = _range(args, "24h")
    store = _open()
    try:
        found = History(store).detections(r, rule=args.rule, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        _print_detections(r, found, args.rule)
    return 0


def _print_detections(r: TimeRange, found: list[dict[str, Any]], rule: str | None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    who = (r.node or "the fleet") + (f", rule {rule}" if rule else "")
    console.print(f"[bold]Detections[/bold] of {who} from {_when(r.since)} to {_when(r.until)}: {len(found) or 'none'}")
    if not found:
        return
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # 80 columns hold it, full start time
    for column in ("node", "rule", "label", "start", "duration", "frames", "peak"):
        numeric = column in ("duration", "frames", "peak")
        t.add_column(column, justify="right" if numeric else "left", no_wrap=column == "start")
    for d in found:
        duration = "open" if d["open"] else f"{d['duration_s']:.1f} s" if d["duration_s"] is not None else "-"
        peak = "-" if d["peak_confidence"] is None else f"{d['peak_confidence']:.2f}"
        t.add_row(d["node"], d["rule"], d["label"] or "-", _when(d["started"]), duration,
                  "-" if d["frames"] is None else str(d["frames"]), peak)  # fmt: skip
    console.print(t)
    opened = sum(1 for d in found if d["open"])
    if opened:
        console.print(f"{opened} open: their end has not been recorded yet")


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    who = report["node"] or "the fleet"
    console.print(f"[bold]{who}[/bold] from {_when(report['since'])} to {_when(report['until'])}")

    def table(title: str, columns: list[str], rows: list[list[object]], cap: int = 30) -> None:
        if not rows:
            console.print(f"{title}: none")
            return
        t = Table(title=title + (f" (first {cap} of {len(rows)})" if len(rows) > cap else ""))
        for c in columns:
            t.add_column(c)
        for row in rows[:cap]:
            t.add_row(*("-" if v is None else str(v) for v in row))
        console.print(t)

    table("Labels", ["label", "predictions"], [[x["label"], x["count"]] for x in report["labels"]])
    table(
        "Series (heartbeat averages)",
        ["time", "fps", "inference ms", "temp °C", "RSS MB", "nodes"],
        [[_when(p["ts"]), p["fps"], p["inference_ms"], p["cpu_temp_c"], p["rss_mb"], p["nodes"]]
         for p in report["series"]],
        cap=60,
    )  # fmt: skip
    table(
        "Nodes",
        ["node", "last seen", "heartbeats", "max °C", "max RSS MB", "avg fps", "model"],
        [[n["node"], _when(n["last_seen"]), n["heartbeats"], n["max_temp_c"], n["max_rss_mb"],
          None if n["avg_fps"] is None else round(n["avg_fps"], 2), n["model"]] for n in report["nodes"]],
    )  # fmt: skip
    offline = [s for s in report["spans"] if not s["online"]]
    online_s = sum(s["seconds"] for s in report["spans"] if s["online"])
    total_s = sum(s["seconds"] for s in report["spans"])
    if total_s:
        console.print(f"Uptime: {100.0 * online_s / total_s:.1f}% of the time with a known status")
    table("Offline spans", ["node", "from", "to", "seconds"],
          [[s["node"], _when(s["start"]), _when(s["end"]), s["seconds"]] for s in offline])  # fmt: skip
    table("Events", ["time", "node", "cmd", "id", "ok", "error"],
          [[_when(e["ts"]), e["node"], e["cmd"], e["id"], e["ok"], e["error"]] for e in report["events"]])  # fmt: skip
    table("OTA", ["time", "node", "phase", "version", "error"],
          [[_when(o["ts"]), o["node"], o["phase"], o["version"], o["error"]] for o in report["ota"]])  # fmt: skip
    if "hourly" in report:
        table("Per hour", list(report["hourly"][0]) if report["hourly"] else [],
              [[_when(h["ts"]), *list(h.values())[1:]] for h in report["hourly"]], cap=200)  # fmt: skip
