"""``edge-node notify``: act on detections without Home Assistant (docs/detections.md).

Subscribes to ``<prefix>/+/detections`` and, for each detection that passes the filters and the rate limit,
runs a command (the detection's JSON on its stdin, a few ``GHOSTPI_*`` variables in its environment) and/or
POSTs the JSON to a webhook. ``NotifyGate`` is the pure part: which detections go out, and at most one per
node and rule every ``min_interval`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from edge_node.config import load_settings
from edge_node.errors import EdgeError, NotifyError
from edge_node.wire import Detection, Topics

__all__ = ["NotifyGate", "register", "run_notify"]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0
WEBHOOK_TIMEOUT_S = 10.0


@dataclass
class NotifyGate:
    """Which detections are notified: by event and rule, at most one per (node, rule) every ``min_interval`` s."""

    events: frozenset[str] = frozenset({"start"})
    rules: frozenset[str] = frozenset()  # empty: every rule
    min_interval: float = 30.0
    last: dict[tuple[str, str], float] = field(default_factory=dict)
    limited: int = 0  # detections held back by the rate limit

    def allow(self, d: Detection, now: float) -> bool:
        if d.event not in self.events or (self.rules and d.rule not in self.rules):
            return False
        key = (d.node, d.rule)
        if now - self.last.get(key, float("-inf")) < self.min_interval:
            self.limited += 1
            log.info("rate limit: not notifying %s %s of %s/%s", d.event, d.id, d.node, d.rule)
            return False
        self.last[key] = now
        return True


async def _run_command(command: Sequence[str], d: Detection) -> None:
    env = os.environ | {
        "GHOSTPI_NODE": d.node,
        "GHOSTPI_RULE": d.rule,
        "GHOSTPI_EVENT": d.event,
        "GHOSTPI_LABEL": d.label,
    }
    proc = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.PIPE, env=env)
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            await proc.communicate(d.to_bytes() + b"\n")
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NotifyError(f"{command[0]} did not finish within {COMMAND_TIMEOUT_S:g} s; it was killed") from None
    if proc.returncode != 0:
        raise NotifyError(f"{command[0]} exited with {proc.returncode}")


@retry(
    retry=retry_if_exception_type(NotifyError),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as answer:
            answer.read(1024)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise NotifyError(f"webhook {url}: {exc}; check the URL and that the server is up") from exc


async def _deliver(d: Detection, command: Sequence[str] | None, webhook: str | None) -> None:
    try:
        if command:
            await _run_command(command, d)
        if webhook:
            await asyncio.to_thread(_post, webhook, d.to_bytes())
        print(f"notified {d.event} {d.id} ({d.node}/{d.rule})", file=sys.stderr, flush=True)
    except (NotifyError, OSError) as exc:
        log.warning("notification of %s failed: %s", d.id, exc)


async def run_notify(
    prefix: str, gate: NotifyGate, *, command: Sequence[str] | None, webhook: str | None, duration: float | None
) -> None:
    """Follow detections until cancelled (or ``duration`` s); one delivery task per notified detection."""
    from edge_node.mqtt import connected, tool_client_id

    settings = load_settings()
    tasks: set[asyncio.Task[None]] = set()
    async with connected(settings.mqtt, identifier=tool_client_id("notify")) as client:
        await client.subscribe(Topics.wildcard(prefix, "detections"), qos=1)
        print(f"following {Topics.wildcard(prefix, 'detections')}", file=sys.stderr, flush=True)
        try:
            async with asyncio.timeout(duration):
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    try:
                        d = Detection.model_validate_json(payload)
                    except ValidationError:
                        log.warning("ignoring a payload on %s that is not a detection", message.topic)
                        continue
                    if gate.allow(d, time.monotonic()):
                        task = asyncio.create_task(_deliver(d, command, webhook))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
        except TimeoutError:
            pass
        if tasks:
            await asyncio.wait(tasks, timeout=COMMAND_TIMEOUT_S + 3 * WEBHOOK_TIMEOUT_S)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "notify",
        help="run a command or POST a webhook for each detection (no Home Assistant needed)",
        description="Follow <prefix>/+/detections and act on each detection, at most once per node and rule "
        "every --min-interval seconds (docs/detections.md).",
    )
    parser.add_argument("--exec", dest="command", nargs=argparse.REMAINDER, metavar="CMD ...",
                        help="command to run per detection (last option): its JSON on stdin, GHOSTPI_NODE, "
                        "GHOSTPI_RULE, GHOSTPI_EVENT, GHOSTPI_LABEL in its environment")  # fmt: skip
    parser.add_argument("--webhook", metavar="URL", help="POST each detection's JSON to this URL")
    parser.add_argument("--rule", action="append", default=[], metavar="NAME", help="only these rules (repeat)")
    parser.add_argument("--on", choices=["start", "end", "both"], default="start", help="which events (start)")
    parser.add_argument("--min-interval", type=float, default=30.0, metavar="S",
                        help="at most one notification per node and rule every S seconds (30)")  # fmt: skip
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S s (default: until Ctrl-C)")
    parser.add_argument("--prefix", help="topic prefix (default: EDGE_TOPIC_PREFIX or 'ghostpi')")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    if not args.command and not args.webhook:
        raise EdgeError("edge-node notify needs --exec CMD ... or --webhook URL (or both)")
    events = frozenset({"start", "end"}) if args.on == "both" else frozenset({args.on})
    gate = NotifyGate(events=events, rules=frozenset(args.rule), min_interval=args.min_interval)
    prefix = args.prefix or load_settings().topic_prefix
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_notify(prefix, gate, command=args.command, webhook=args.webhook, duration=args.duration))
    return 0
