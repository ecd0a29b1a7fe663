"""``edge-node run``: resolve the settings, the model bundle and the broker, then run the node.

With no broker configured it starts the embedded demo broker and, unless told otherwise, a subscriber on
``<prefix>/+/predictions`` that prints what any dashboard would receive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from edge_node.bundle import Bundle
from edge_node.config import Settings, load_settings
from edge_node.errors import EdgeError
from edge_node.mqtt import halt
from edge_node.ota.store import BundleStore

__all__ = ["register", "resolve_bundle", "run"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the edge node (settings from EDGE_* variables and .env)",
        description="Run the node. With no EDGE_MQTT__HOST it starts an embedded broker on localhost.",
    )
    p.add_argument(
        "--echo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print what a subscriber to <prefix>/+/predictions receives (default: on with the embedded broker)",
    )
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    settings = load_settings()
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else settings.log_level)
    return asyncio.run(run(settings, echo=args.echo, duration=args.duration))


def resolve_bundle(settings: Settings) -> tuple[Bundle, str, BundleStore]:
    """The bundle to start on, where it came from ("active", "previous" or "factory") and the OTA store.

    The configured bundle (or the demo bundle, built on first use) is the factory bundle: the node runs
    it until an over-the-air update is committed, and falls back to it if the installed ones are unusable.
    """
    path = settings.model.bundle
    if path is None:
        from edge_node.modelzoo.demo import ensure_demo_bundle

        path = ensure_demo_bundle()
    # The store under <state_dir>/ota, with the factory bundle as the bundle of last resort.
    store = BundleStore(settings.state_dir / "ota", Path(path))
    bundle, source = store.startup()
    return bundle, source, store


async def run(settings: Settings, *, echo: bool | None = None, duration: float | None = None) -> int:
    from edge_node.node.builder import build

    broker = None
    if not settings.mqtt.configured:
        from edge_node.mqtt import EmbeddedBroker

        broker = EmbeddedBroker("127.0.0.1", settings.mqtt.port)
        port = await broker.start()
        # amqtt speaks MQTT 3.1.1 only.
        mqtt = settings.mqtt.model_copy(update={"host": "127.0.0.1", "port": port, "protocol": "3.1.1"})
        settings = settings.model_copy(update={"mqtt": mqtt})
        echo = True if echo is None else echo
        print(
            f"Embedded MQTT broker on 127.0.0.1:{port}  (try: mosquitto_sub -p {port} -t "
            f"'{settings.topic_prefix}/+/predictions')",
            file=sys.stderr,
            flush=True,
        )
    try:
        bundle, source, store = await asyncio.to_thread(resolve_bundle, settings)
        node = await build(settings, bundle, model_source=source, store=store)
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, node.stop)
        if echo and settings.mqtt.cert_file is not None:
            # A second connection with the node's own certificate: a broker that binds client ids to
            # certificates (deploy/mosquitto/) would drop the node each time the echo connects, and back.
            log.warning("--echo is off: it would share the node's certificate; watch with edge-node monitor instead")
            echo = False
        echo_task = asyncio.create_task(_echo(settings)) if echo else None
        try:
            await node.run()
        finally:
            if echo_task is not None:
                await halt(echo_task)
    except EdgeError as exc:
        print(f"edge-node: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if broker is not None:
            await broker.stop()
    return 0


async def _echo(settings: Settings) -> None:
    """Subscribe like a dashboard would: print each label change at once, and the current label once a second."""
    from rich.console import Console

    from edge_node.mqtt import connected
    from edge_node.wire import Topics

    console = Console(highlight=False, soft_wrap=True)
    topic = Topics.wildcard(settings.topic_prefix, "predictions")
    await asyncio.sleep(0.5)  # let the node connect first
    last: dict[str, tuple[str, float]] = {}
    with contextlib.suppress(EdgeError):
        async with connected(settings.mqtt, identifier=f"ghostpi-echo-{settings.node_id}") as client:
            await client.subscribe(topic, qos=0)
            console.print(f"[dim]subscribed to {topic}; printing each label change, and once a second per node[/]")
            async for message in client.messages:
                if not message.topic.matches(topic):
                    continue  # amqtt may send a retained message another client subscribed to: not ours
                raw = message.payload if isinstance(message.payload, bytes) else b"{}"
                try:
                    p = json.loads(raw)
                    node, label = p["node"], p["label"]
                except (ValueError, KeyError, TypeError):
                    console.print(f"[red]{message.topic}: unreadable payload {raw[:80]!r}[/]")
                    continue
                if not last:
                    console.print(f"[dim]first message on {message.topic}:[/]")
                    console.print_json(raw.decode())
                now = time.monotonic()
                prev = last.get(node)
                if prev is not None and prev[0] == label and now - prev[1] < 1.0:
                    continue
                last[node] = (label, now)
                top = ", ".join(f"{t['label']} {t['confidence']:.2f}" for t in p["top_k"][1:3])
                console.print(
                    f"[bold]{message.topic}[/] #{p['seq']} [green]{label}[/] {p['confidence']:.2f} "
                    f"({top}) {p['fps']:.1f} fps {p['latency_ms']['inference']:.1f} ms @ {p['resolution']}px"
                )
