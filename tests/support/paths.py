"""The checkout, the shared data beside it, and a clean environment for the processes tests start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["REPO", "SHARED", "clean_env", "run_cli"]

REPO = Path(__file__).resolve().parents[2]
# Data beside the checkout (CI has it; a fresh clone does not). GHOSTPI_SHARED names it for other layouts,
# such as a git worktree.
SHARED = Path(os.environ.get("GHOSTPI_SHARED") or REPO.parent / "shared")


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without its EDGE_* variables, plus ``settings``.

    A developer's shell may export EDGE_* for a real node; a test's process must see only what the test sets.
    The checkout goes first on PYTHONPATH, so a process runs this tree's code whatever is installed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(settings)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``edge-node ARGS`` in a process of its own, as a user runs it; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "edge_node", *args],
        env=clean_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
