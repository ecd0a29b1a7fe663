"""``edge-node ctl | monitor | simulate`` (placeholder until the fleet tools land)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    del sub
