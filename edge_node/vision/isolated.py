"""The device choice's checks and timings, run in a short-lived child process.

Choosing loads every runtime the settings allow and builds a dozen sessions; a runtime's libraries and the
heap those sessions fragmented stay with a process for its whole life. Measured with the demo model, a node
that chose LiteRT after timing ONNX Runtime in-process sat at 224 MB, one that loaded LiteRT alone at 186 MB.
In a child, the node keeps only what it serves, and a runtime that crashes on a broken file while being
checked takes the child down, not the node. The child runs niced: during an update the old model keeps
serving, and the choice's imports and timings once stalled its predictions for 164 ms (at 20 fps).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_node.bundle import Bundle
from edge_node.config import ModelConfig
from edge_node.errors import EdgeError, InferenceError
from edge_node.vision.selection import Choice, choose

__all__ = ["TIMEOUT_S", "choose_isolated"]

log = logging.getLogger(__name__)

TIMEOUT_S = 600.0  # checks and timings take seconds; a Pi Zero with a big bundle takes minutes
NICE = 10  # during an update the old model keeps serving: the choice must not starve it of CPU
_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The child imports this module as itself: run as ``-m`` it would be imported twice (through the package, which
# imports it, and as __main__), which runpy warns about on every start.
_CHILD = f"from {__name__} import child_main; child_main()"


def choose_isolated(
    bundle: Bundle,
    cfg: ModelConfig,
    *,
    resolution: int,
    frame: np.ndarray | None = None,
    cache: Path | None = None,
    strict: bool = False,
    timeout: float = TIMEOUT_S,
) -> Choice:
    """:func:`edge_node.vision.selection.choose` in a child process (same arguments, same errors).

    The child is this interpreter running :func:`child_main`: the arguments go in pickled on stdin, the choice
    or the error comes back pickled on stdout, and the child logs to the node's stderr at the node's level.
    """
    level = logging.getLogger().getEffectiveLevel()
    request = pickle.dumps((bundle, cfg, resolution, frame, cache, strict, level))
    started = time.monotonic()
    try:
        run = subprocess.run(
            [sys.executable, "-c", _CHILD], input=request, stdout=subprocess.PIPE, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise InferenceError(
            f"the device choice for bundle {bundle.manifest.name} did not finish within {timeout:.0f} s; "
            "pin EDGE_MODEL__RUNTIME, EDGE_MODEL__PRECISION and EDGE_MODEL__WORKERS to skip it"
        ) from None
    except OSError as exc:
        raise InferenceError(f"cannot start the device choice ({sys.executable}): {exc}") from exc
    try:
        outcome, value = pickle.loads(run.stdout)
    except Exception:
        raise InferenceError(
            f"the device choice for bundle {bundle.manifest.name} died (exit code {run.returncode}): a runtime "
            "crashed on one of its files; the log above names the last file checked"
        ) from None
    if outcome == "error" and isinstance(value, EdgeError):
        raise value
    if not isinstance(value, Choice):
        raise InferenceError(f"the device choice sent {type(value).__name__}, not a choice; this is a bug")
    log.debug("device choice measured in a child process in %.1f s", time.monotonic() - started)
    return value


def _portable(exc: EdgeError) -> EdgeError:
    """``exc`` if it survives pickling (most errors: one message argument), else an InferenceError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return InferenceError(str(exc))
    return exc


def child_main() -> None:
    """The child's side, run by :func:`choose_isolated`: nothing but the answer reaches stdout (runtimes print to
    fd 1, so it goes to stderr)."""
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    os.nice(NICE)  # before any runtime starts a thread: they all inherit it
    bundle, cfg, resolution, frame, cache, strict, level = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=level, format=_LOG_FORMAT, stream=sys.stderr)
    result: tuple[str, object]
    try:
        result = ("ok", choose(bundle, cfg, resolution=resolution, frame=frame, cache=cache, strict=strict))
    except EdgeError as exc:
        result = ("error", _portable(exc))
    except Exception as exc:  # anything else is a bug: its traceback goes to the node's log
        log.exception("the device choice failed")
        result = ("error", InferenceError(f"the device choice failed: {type(exc).__name__}: {exc}"))
    answer.write(pickle.dumps(result))
    answer.close()
