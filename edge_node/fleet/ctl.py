"""``edge-node ctl NODE|all COMMAND``: send one command and wait for each node's answer.

Stub: the sub-parser exists so the fleet CLI can import and register it; the commands land next.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ctl`` to the ``edge-node`` sub-commands."""
    parser = sub.add_parser("ctl", help="send a command to one node or the whole fleet and wait for results")
    parser.add_argument("target", metavar="NODE|all", help="node id, or 'all' for every online node")
    parser.set_defaults(handler=_not_ready)


def _not_ready(args: argparse.Namespace) -> int:
    del args
    raise SystemExit("edge-node ctl: not implemented yet")
