"""``edge-node dashboard``: serve the fleet's web dashboard (settings: ``EDGE_DASHBOARD__*``, ``EDGE_MQTT__*``).

Importing this module costs nothing: aiohttp is imported by the handler, which says which extra to install
when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from urllib.parse import urlsplit

from edge_node.config import load_settings
from edge_node.errors import MissingExtraError

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dashboard",
        help="serve the fleet's web dashboard",
        description="Serve a web page with every node under <prefix>/+, live, with operator actions. "
        "Settings: EDGE_DASHBOARD__* and the same EDGE_MQTT__* as the node (docs/dashboard.md).",
    )
    parser.add_argument(
        "--bind", metavar="ADDR", help="address to listen on (default: EDGE_DASHBOARD__BIND, 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, metavar="N", help="port (default: EDGE_DASHBOARD__PORT, 8080; 0: any)")
    parser.add_argument("--prefix", help="topic prefix (default: EDGE_TOPIC_PREFIX or 'ghostpi')")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("edge-node dashboard", "dashboard") from exc
    from edge_node.dashboard.security import new_token
    from edge_node.dashboard.server import Dashboard, run_dashboard

    settings = load_settings()
    cfg = settings.dashboard
    token = cfg.resolved_token()
    generated = token is None
    if generated:
        token = new_token()
    bind = args.bind or cfg.bind
    port = cfg.port if args.port is None else args.port
    dashboard = Dashboard(cfg, settings.mqtt, args.prefix or settings.topic_prefix, token)

    def ready(url: str) -> None:
        if bind in ("0.0.0.0", "::"):
            url = f"http://{socket.gethostname()}:{urlsplit(url).port}/"  # every interface: name this machine
        shown = f"{url}#token={token}" if generated else url
        print(f"GhostPi dashboard: {shown}", flush=True)
        if generated:
            print(
                "  (no EDGE_DASHBOARD__TOKEN set: actions use the one-time token in this link; "
                "set one to keep it across restarts)",
                flush=True,
            )
        if bind not in ("127.0.0.1", "::1", "localhost") and not cfg.view_requires_token:
            log.info("listening on %s: anyone who reaches this port can watch (not act); "
                     "EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN=true closes viewing too", bind)  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await run_dashboard(dashboard, bind=bind, port=port, ready=ready, stop=stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        from edge_node.errors import ConfigError

        raise ConfigError(f"cannot listen on {bind}:{port}: {exc}; pick another --port or --bind") from exc
    return 0
