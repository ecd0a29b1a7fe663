"""``edge-node ctl NODE|all COMMAND``: send one command and wait for each node's answer.

The command gets a fresh id and goes to ``<prefix>/<target>/control``; each node answers on its
``events`` topic with that id. For ``all``, the nodes waited for are those whose retained ``status`` says
``online``. The exit code is 0 only if every node answered ``ok`` in time. While an update runs, phase
changes from the retained ``ota`` topic are shown on stderr. ``snapshot`` also waits for each node's JPEG
and saves it (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge_node.config import MqttConfig, load_settings
from edge_node.errors import CommandError
from edge_node.wire import (
    FLEET,
    ONLINE,
    Event,
    Mode,
    OtaStatus,
    Ping,
    Rollback,
    SetMode,
    SetWatch,
    Snapshot,
    Topics,
    UpdateModel,
)

__all__ = ["Answer", "Tracker", "build_command", "register", "run_ctl", "save_snapshots"]

DISCOVERY = 1.0  # seconds to collect retained statuses when the target is "all"
Command = SetMode | Ping | UpdateModel | Rollback | Snapshot | SetWatch


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ctl`` to the ``edge-node`` sub-commands."""
    parser = sub.add_parser(
        "ctl",
        help="send a command to one node or the whole fleet and wait for results",
        description="Send a command and wait for each node's event. Exit code 0 only if all succeed.",
    )
    parser.add_argument("target", metavar="NODE|all", help="a node id, or 'all' for every online node")
    parser.add_argument("--prefix", help="topic prefix (default: EDGE_TOPIC_PREFIX or 'ghostpi')")
    parser.add_argument("--json", action="store_true", help="print each node's event as JSON")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    mode = actions.add_parser("set-mode", help="switch the resolution mode")
    mode.add_argument("mode", choices=[m.value for m in Mode])
    _timeout(mode, 10.0)

    update = actions.add_parser("update-model", help="install a model bundle over the air")
    update.add_argument("url", help="https:// (or, if the nodes allow it, http://) URL of the .tar.gz bundle")
    update.add_argument("--sha256", required=True, metavar="HEX", help="sha256 of the archive")
    update.add_argument("--version", required=True, metavar="V", help="the bundle's manifest version")
    update.add_argument("--size", type=int, metavar="BYTES", help="archive size (the node refuses more)")
    _timeout(update, 300.0)

    rollback = actions.add_parser("rollback", help="go back to the previous model bundle")
    _timeout(rollback, 60.0)

    ping = actions.add_parser("ping", help="ask for an immediate heartbeat")
    _timeout(ping, 10.0)

    snap = actions.add_parser(
        "snapshot", help="fetch a JPEG of the latest frame (nodes need EDGE_SNAPSHOT__ENABLED=true)"
    )
    snap.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="file to write (one node) or folder (all); default: NODE-snapshot.jpg in the current folder",
    )
    _timeout(snap, 10.0)

    watch = actions.add_parser("watch", help="set the watch rules (docs/detections.md); no rules: stop watching")
    watch.add_argument(
        "rules",
        nargs="*",
        metavar="RULE",
        help='a rule as JSON, e.g. \'{"name": "cat", "classes": ["cat"], "min_confidence": 0.3, "min_frames": 3}\'',
    )
    watch.add_argument("--file", type=Path, metavar="PATH", help="a JSON file with a list of rules, added after RULEs")
    _timeout(watch, 10.0)
    parser.set_defaults(handler=_handle)


def _timeout(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--timeout", type=float, default=default, metavar="S", help=f"seconds to wait for answers ({default:g})"
    )


def build_command(args: argparse.Namespace, ident: str) -> Command:
    """The wire command for parsed ``ctl`` arguments (validated like the node validates it)."""
    if args.action == "set-mode":
        return SetMode(cmd="set_mode", id=ident, mode=Mode(args.mode))
    if args.action == "update-model":
        return UpdateModel(
            cmd="update_model", id=ident, url=args.url, sha256=args.sha256, version=args.version, size=args.size
        )
    if args.action == "rollback":
        return Rollback(cmd="rollback", id=ident)
    if args.action == "snapshot":
        return Snapshot(cmd="snapshot", id=ident)
    if args.action == "watch":
        return SetWatch.model_validate({"cmd": "set_watch", "id": ident, "rules": _rules(args.rules, args.file)})
    return Ping(cmd="ping", id=ident)


@dataclass
class Answer:
    node: str
    event: Event | None = None  # None: no answer in time
    snapshot: bytes | None = None  # the JPEG, for the snapshot command

    @property
    def ok(self) -> bool:
        return self.event is not None and self.event.ok

    def line(self) -> str:
        if self.event is None:
            return f"{self.node}: TIMEOUT no answer (offline, or still busy?)"
        ev = self.event
        detail = " ".join(f"{k}={v}" for k, v in (ev.detail or {}).items() if v is not None)
        if ev.ok:
            return f"{self.node}: ok {ev.cmd} {detail}".rstrip()
        return f"{self.node}: FAILED {ev.cmd}: {ev.error} {detail}".rstrip()


@dataclass
class Tracker:
    """Pure bookkeeping of who was asked and who answered; fed every message ``ctl`` receives."""

    prefix: str
    command_id: str
    expected: set[str] = field(default_factory=set)
    answers: dict[str, Answer] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, bytes] = field(default_factory=dict)

    def status(self, node: str, payload: bytes) -> None:
        if payload.strip() == ONLINE:
            self.expected.add(node)

    def feed(self, topic: str, payload: bytes) -> str | None:
        """Take one message; return a progress line worth showing, if any."""
        parsed = Topics.parse(self.prefix, topic)
        if parsed is None:
            return None
        node, leaf = parsed
        if leaf == "snapshot":  # no id in a JPEG: the first one after the command was sent
            self.snapshots.setdefault(node, payload)
            return None
        if leaf == "events":
            try:
                ev = Event.model_validate_json(payload)
            except ValueError:
                return None
            if ev.id == self.command_id and node not in self.answers:
                self.answers[node] = Answer(node, ev)
            return None
        if leaf == "ota":
            try:
                st = OtaStatus.model_validate_json(payload)
            except ValueError:
                return None
            if st.id != self.command_id:
                return None
            text = st.phase + (f" {st.progress:.0f}%" if st.progress is not None else "")
            if self.phases.get(node) == text:
                return None
            self.phases[node] = text
            return f"{node}: {text} {st.version or ''}".rstrip()
        return None

    def done(self) -> bool:
        """Every expected node answered, and each successful snapshot answer has its JPEG."""
        pending = [n for n, a in self.answers.items() if a.ok and a.event and a.event.cmd == "snapshot"]
        return bool(self.expected) and self.expected <= set(self.answers) and set(pending) <= set(self.snapshots)

    def results(self) -> list[Answer]:
        nodes = sorted(self.expected | set(self.answers))
        out = []
        for n in nodes:
            answer = self.answers.get(n, Answer(n))
            if answer.ok and n in self.snapshots:
                answer.snapshot = self.snapshots[n]
            out.append(answer)
        return out


async def run_ctl(
    cfg: MqttConfig, prefix: str, target: str, command: Command, wait_s: float, *, quiet: bool = False
) -> list[Answer]:
    """Publish ``command`` to ``target`` and collect the answers for up to ``wait_s`` (see :class:`Tracker`).

    For ``all`` an empty list means no node was online and nothing was sent.
    """
    from edge_node.mqtt import connected, tool_client_id

    assert command.id is not None
    tracker = Tracker(prefix, command.id)
    async with connected(cfg, identifier=tool_client_id("ctl")) as client:
        await client.subscribe(Topics.wildcard(prefix, "events"), qos=1)
        await client.subscribe(Topics.wildcard(prefix, "ota"), qos=1)
        if isinstance(command, Snapshot):
            await client.subscribe(Topics.wildcard(prefix, "snapshot"), qos=1)
        if target == FLEET:
            await client.subscribe(Topics.wildcard(prefix, "status"), qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCOVERY):
                    async for message in client.messages:
                        parsed = Topics.parse(prefix, str(message.topic))
                        if parsed is not None and parsed[1] == "status":
                            tracker.status(parsed[0], _payload(message.payload))
            if not tracker.expected:
                return []
        else:
            tracker.expected.add(target)
        await client.publish(Topics.control_for(prefix, target), command.model_dump_json(exclude_none=True), qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    line = tracker.feed(str(message.topic), _payload(message.payload))
                    if line and not quiet:
                        print(line, file=sys.stderr, flush=True)
                    if tracker.done():
                        break
    return tracker.results()


def save_snapshots(answers: list[Answer], out: Path | None, *, fleet: bool) -> list[tuple[str, Path]]:
    """Write each received JPEG: to ``out`` (one node) or into the folder ``out`` (fleet); default cwd."""
    folder = out if fleet and out is not None else Path()
    saved = []
    for answer in answers:
        if answer.snapshot is None:
            continue
        path = out if out is not None and not fleet else folder / f"{answer.node}-snapshot.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(answer.snapshot)
        saved.append((answer.node, path))
    return saved


def _rules(texts: list[str], file: Path | None) -> list[object]:
    """The rules of ``ctl watch`` as JSON values, validated afterwards like the node validates them."""
    rules: list[object] = []
    for text in texts:
        try:
            rules.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CommandError(
                f"invalid command: rule {text!r} is not JSON ({exc.msg}); quote it in single quotes"
            ) from exc
    if file is not None:
        try:
            listed = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"invalid command: cannot read rules from {file}: {exc}") from exc
        if not isinstance(listed, list):
            raise CommandError(f"invalid command: {file} must hold a JSON list of rules")
        rules += listed
    return rules


def _payload(raw: object) -> bytes:
    return raw if isinstance(raw, bytes) else str(raw).encode() if raw is not None else b""


def _handle(args: argparse.Namespace) -> int:
    settings = load_settings()
    prefix = args.prefix or settings.topic_prefix
    try:
        command = build_command(args, f"ctl-{uuid.uuid4().hex[:12]}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CommandError(f"invalid command: {where}: {first['msg']}") from exc
    started = time.monotonic()
    answers = asyncio.run(run_ctl(settings.mqtt, prefix, args.target, command, args.timeout, quiet=args.json))
    if not answers:
        print(f"no node is online under {prefix}/ (retained status); nothing was sent", file=sys.stderr)
        return 1
    for answer in answers:
        if args.json:
            print(json.dumps({"node": answer.node, "event": answer.event and answer.event.model_dump(mode="json")}))
        else:
            print(answer.line())
    if isinstance(command, Snapshot):
        for node, path in save_snapshots(answers, args.out, fleet=args.target == FLEET):
            print(f"{node}: saved {path}", file=sys.stderr)
    failed = sum(not a.ok for a in answers)
    if not args.json:
        took = time.monotonic() - started
        print(f"{len(answers) - failed}/{len(answers)} ok in {took:.1f}s", file=sys.stderr)
    return 1 if failed else 0
