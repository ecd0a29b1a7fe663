"""ONNX Runtime sessions as the node creates them (CPU, fixed intra-op threads), for build checks and eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge_node.errors import InferenceError
from edge_node.runtimes.onnx import session_options

__all__ = ["run_logits", "session"]


def session(path: Path, *, threads: int) -> ort.InferenceSession:
    try:  # the node's own session options, so that latencies measured here are the node's
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise InferenceError(f"ONNX Runtime cannot load {path.name}: {exc}") from exc


def run_logits(sess: ort.InferenceSession, tensor: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Run one (1, 3, R, R) input; return its (1, classes) float32 output."""
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: tensor})[0]
    return np.asarray(out, dtype=np.float32)
