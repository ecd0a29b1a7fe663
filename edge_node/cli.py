"""The ``edge-node`` command line: ``run``, ``bench``, ``model …``, ``ctl …``, ``monitor``, ``simulate``, ``dashboard``,
``record``, ``history``.

Each command group lives in its own module and registers its sub-parsers here; heavy imports (torch,
rich tables) happen inside the handlers, so ``edge-node run`` on a Pi never loads them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from edge_node import __version__
from edge_node.errors import EdgeError

__all__ = ["main"]

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    from edge_node import benchmark
    from edge_node.dashboard import cli as dashboard_cli
    from edge_node.fleet import cli as fleet_cli
    from edge_node.modelzoo import cli as model_cli
    from edge_node.node import runner
    from edge_node.record import cli as record_cli

    parser = argparse.ArgumentParser(prog="edge-node", description="GhostPi edge node and fleet tools")
    parser.add_argument("--version", action="version", version=f"edge-node {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runner.register(sub)
    benchmark.register(sub)
    model_cli.register(sub)
    fleet_cli.register(sub)
    dashboard_cli.register(sub)
    record_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except EdgeError as exc:
        print(f"edge-node: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
