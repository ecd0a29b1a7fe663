"""``edge-node dashboard``: serve the fleet's web dashboard (settings: ``EDGE_DASHBOARD__*``, ``EDGE_MQTT__*``).

Importing this module costs nothing: aiohttp is imported by the handler, which says which extra to install
when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from edge_node.config import load_settings
from edge_node.errors import ConfigError, MissingExtraError

__all__ = ["TOKEN_FILE", "register", "write_token_file"]

TOKEN_FILE = "dashboard-token"

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
    from edge_node.dashboard.exposure import exposure, tls_context
    from edge_node.dashboard.security import new_token
    from edge_node.dashboard.server import Dashboard, run_dashboard

    settings = load_settings()
    cfg = settings.dashboard
    bind = args.bind or cfg.bind
    port = cfg.port if args.port is None else args.port
    exposed = exposure(cfg, bind, socket.gethostname())  # refuses plain HTTP beyond loopback unless allowed
    tls = tls_context(cfg)
    token = cfg.resolved_token()
    generated = token is None
    if token is None:
        token = new_token()
    # Printed only to a person's terminal; otherwise (a journal, a log file keeps what is printed) in a file.
    in_link = generated and sys.stdout.isatty()
    token_path = write_token_file(settings.state_dir, token) if generated and not in_link else None
    history = None
    if cfg.history:  # the timeline and the charts reach back as far as the recorder's database
        from edge_node.dashboard.history import QUERY_TIMEOUT, RecorderHistory
        from edge_node.record.store import default_path, open_store

        rec = settings.record
        where = "EDGE_RECORD__DSN" if rec.resolved_dsn() else str(rec.path or default_path(settings.state_dir))
        # A statement that outlives the request is cancelled by the server: it would hold the reader's one thread.
        opener = partial(open_store, rec, settings.state_dir, create=False, statement_timeout=QUERY_TIMEOUT)
        history = RecorderHistory(opener, where)
    dashboard = Dashboard(cfg, settings.mqtt, args.prefix or settings.topic_prefix, token, exposed, history)

    def ready(url: str) -> None:
        if bind in ("0.0.0.0", "::"):
            parts = urlsplit(url)  # every interface: name this machine
            url = f"{parts.scheme}://{socket.gethostname()}:{parts.port}/"
        if in_link:
            print(f"GhostPi dashboard: {url}#token={token}", flush=True)
            print("  (no EDGE_DASHBOARD__TOKEN set: this link carries a one-time token; set one to keep it "
                  "across restarts)", flush=True)  # fmt: skip
        else:
            print(f"GhostPi dashboard: {url}", flush=True)
        if token_path is not None:
            log.warning("no EDGE_DASHBOARD__TOKEN set: this run's operator token is in %s (readable by this user "
                        "only); set one to keep it across restarts", token_path)  # fmt: skip
        if not exposed.loopback and not exposed.view_needs_token:
            log.warning("listening on %s with EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN=false: anyone who reaches this "
                        "port can watch the fleet (not act)", bind)  # fmt: skip
        if not exposed.loopback and not exposed.tls:
            log.warning("listening on %s over plain HTTP (EDGE_DASHBOARD__ALLOW_HTTP=true): the operator token "
                        "crosses the network in clear text", bind)  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await run_dashboard(dashboard, bind=bind, port=port, ready=ready, stop=stop, tls=tls)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise ConfigError(f"cannot listen on {bind}:{port}: {exc}; pick another --port or --bind") from exc
    return 0


def write_token_file(state_dir: Path, token: str) -> Path:
    """This run's token in ``<state dir>/dashboard-token``, created 0600 (never readable by others, not even
    for a moment), replacing the last run's."""
    path = state_dir / TOKEN_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
        fresh.unlink(missing_ok=True)  # left by a run that died here with the same pid
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        os.replace(fresh, path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write this run's dashboard token to {path}: {exc}; set EDGE_DASHBOARD__TOKEN_FILE (or "
            "EDGE_STATE_DIR to a writable directory)"
        ) from exc
    return path
