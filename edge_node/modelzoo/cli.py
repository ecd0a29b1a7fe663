"""``edge-node model …`` sub-commands (placeholder until the toolchain lands)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("model", help="build, evaluate, sign and serve model bundles")
