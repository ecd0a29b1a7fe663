"""ONNX Runtime on the CPU, with the session options every part of the project uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge_node.errors import InferenceError
from edge_node.runtimes.base import Tensor

__all__ = ["OrtSession", "session_options"]


def session_options(threads: int, *, spin: bool = False) -> ort.SessionOptions:
    """The options every session uses (node, toolchain and benchmarks alike).

    ``spin``: ONNX Runtime's default lets its pool threads busy-wait for the next run. Between two frames of the
    node (a hand-off, the preprocessing of the next frame) they burn CPU that the node's own threads need on a
    2-core device; off, they sleep (docs/benchmarks.md has the figures).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # A memory pattern pre-plans one activation block per session and run shape; for a model this small it
    # bought no speed here and cost ~7 MB per session, which kept a 2-worker node above 200 MB
    # (docs/reliability.md has the figures).
    opts.enable_mem_pattern = False
    allow = "1" if spin else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", allow)
    opts.add_session_config_entry("session.inter_op.allow_spinning", allow)
    return opts


class OrtSession:
    """An ``onnxruntime.InferenceSession`` on the CPU execution provider."""

    runtime: Literal["onnxruntime"] = "onnxruntime"

    def __init__(self, path: Path, *, threads: int, spin: bool = False) -> None:
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options(threads, spin=spin), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own types (Fail, InvalidProtobuf, NoSuchFile, ...)
            raise InferenceError(f"ONNX Runtime cannot load {path.name}: {str(exc).strip()[:300]}") from exc
        self.input_name: str = self._session.get_inputs()[0].name
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())

    def run(self, tensor: Tensor) -> npt.NDArray[np.float32]:
        try:
            out = self._session.run(None, {self.input_name: tensor})[0]
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime inference failed: {str(exc).strip()[:300]}") from exc
        return np.asarray(out, dtype=np.float32)

    def run_outputs(self, tensor: Tensor, names: Sequence[str]) -> list[npt.NDArray[np.float32]]:
        """The named outputs for one input, in the order asked (the toolchain's trunk has two)."""
        try:
            outs = self._session.run(list(names), {self.input_name: tensor})
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime inference failed: {str(exc).strip()[:300]}") from exc
        return [np.asarray(out, dtype=np.float32) for out in outs]
