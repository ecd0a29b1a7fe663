"""LiteRT (TensorFlow Lite) with XNNPACK on the CPU: the ``litert`` extra (``ai-edge-litert``).

``ai_edge_litert`` is imported when the first session is opened, never at module import, so a node that
installs only ONNX Runtime can still import everything else. The interpreter's built-in op resolver applies
the XNNPACK delegate to every op it supports (FP32 and INT8 alike) with ``num_threads`` threads; ``invoke``
releases the GIL, so the node's other threads (another worker, the event loop) keep working meanwhile.

The toolchain's TFLite files take and return float32 (their INT8 files quantise the input inside the
graph), but files with an INT8/UINT8 input or output are accepted as well: the tensor is quantised or the
output dequantised here with the file's own scale and zero point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_node.errors import InferenceError, MissingExtraError
from edge_node.runtimes.base import Tensor
from edge_node.runtimes.registry import info

__all__ = ["LiteRTSession"]


class LiteRTSession:
    """One ``ai_edge_litert`` interpreter with XNNPACK; ``run`` is called by one thread at a time."""

    runtime: Literal["litert"] = "litert"

    def __init__(self, path: Path, *, threads: int, spin: bool = False) -> None:
        """``spin`` is accepted for the common interface and ignored: the LiteRT wrapper has no such switch."""
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            entry = info("litert")
            raise MissingExtraError(entry.title, entry.extra or entry.package) from exc
        if not path.is_file():
            raise InferenceError(f"LiteRT cannot load {path.name}: no such file ({path})")
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=max(1, threads))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # the wrapper raises ValueError for unreadable files
            raise InferenceError(f"LiteRT cannot load {path.name}: {str(exc).strip()[:300]}") from exc
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InferenceError(
                f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; a classifier needs one of each"
            )
        self._input: dict[str, Any] = inputs[0]
        self._output: dict[str, Any] = outputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])

    def run(self, tensor: Tensor) -> npt.NDArray[np.float32]:
        if tensor.shape != self.input_shape:
            raise InferenceError(
                f"LiteRT inference failed: the model takes a tensor of shape {self.input_shape}, got "
                f"{tensor.shape}; check the bundle's layout (NHWC/NCHW) for this file"
            )
        try:
            self._interpreter.set_tensor(self._input["index"], self._to_input(tensor))
            self._interpreter.invoke()
            out: npt.NDArray[Any] = self._interpreter.get_tensor(self._output["index"])  # a copy, not the arena
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"LiteRT inference failed: {str(exc).strip()[:300]}") from exc
        if out.dtype != np.float32:
            scale, zero = self._output["quantization"]
            return np.asarray((out.astype(np.float32) - zero) * scale, dtype=np.float32)
        return np.asarray(out, dtype=np.float32)

    def _to_input(self, tensor: Tensor) -> npt.NDArray[Any]:
        if tensor.dtype == self.input_dtype:
            return tensor
        if self.input_dtype == np.float32:
            return tensor.astype(np.float32)
        scale, zero = self._input["quantization"]
        if not scale:  # an integer input without quantisation: a model that normalises itself
            return tensor.astype(self.input_dtype)
        info = np.iinfo(self.input_dtype)
        return np.asarray(np.clip(np.rint(tensor / scale) + zero, info.min, info.max), dtype=self.input_dtype)
