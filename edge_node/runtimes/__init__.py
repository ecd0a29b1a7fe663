"""Inference runtimes behind one small interface: a :class:`Session` runs one model file on the CPU.

The node, the toolchain and the benchmarks open model files only through :func:`open_session`, so a bundle
can carry files for several runtimes (ONNX Runtime, LiteRT) and every caller treats them alike. Each
runtime's module is imported only when a file of that runtime is opened: a Pi that installs one runtime
never imports the other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edge_node.runtimes.base import RUNTIMES, Runtime, Session, Tensor

__all__ = ["RUNTIMES", "Runtime", "Session", "Tensor", "installed", "open_session"]

_MODULES: dict[Runtime, str] = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert"}


def installed(runtime: Runtime) -> bool:
    """Whether the Python package behind ``runtime`` can be imported here."""
    return importlib.util.find_spec(_MODULES[runtime]) is not None


def open_session(path: Path, runtime: Runtime, *, threads: int) -> Session:
    """Load ``path`` with ``runtime`` using ``threads`` CPU threads; raises InferenceError or MissingExtraError."""
    if runtime == "onnxruntime":
        from edge_node.runtimes.onnx import OrtSession

        return OrtSession(path, threads=threads)
    if runtime == "litert":
        from edge_node.runtimes.litert import LiteRTSession

        return LiteRTSession(path, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
