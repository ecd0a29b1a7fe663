"""Inference runtimes behind one small interface: a :class:`Session` runs one model file on the CPU.

The node, the toolchain and the benchmarks open model files only through :func:`open_session`, so a bundle
can carry files for several runtimes (ONNX Runtime, LiteRT) and every caller treats them alike. Which runtimes
exist, what each needs installed and which class opens its files is listed once, in :mod:`.registry`. Each
runtime's module is imported only when a file of that runtime is opened: a Pi that installs one runtime never
imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from edge_node.runtimes.base import Session, Tensor
from edge_node.runtimes.registry import (
    REGISTRY,
    RUNTIMES,
    Runtime,
    RuntimeInfo,
    info,
    installed,
    session_class,
    versions,
)

if TYPE_CHECKING:
    from edge_node.runtimes.onnx import OrtSession

__all__ = [
    "REGISTRY",
    "RUNTIMES",
    "Runtime",
    "RuntimeInfo",
    "Session",
    "Tensor",
    "info",
    "installed",
    "open_session",
    "versions",
]


@overload
def open_session(path: Path, runtime: Literal["onnxruntime"], *, threads: int, spin: bool = ...) -> OrtSession: ...


@overload
def open_session(path: Path, runtime: Runtime, *, threads: int, spin: bool = ...) -> Session: ...


def open_session(path: Path, runtime: Runtime, *, threads: int, spin: bool = False) -> Session:
    """Load ``path`` with ``runtime`` using ``threads`` CPU threads; raises InferenceError or MissingExtraError.

    ``spin`` lets the runtime's pool threads busy-wait between runs (ONNX Runtime's default; the node's is off:
    ``model.spin``); runtimes without such a switch ignore it.

    An ONNX Runtime session also runs named outputs (``OrtSession.run_outputs``), which the toolchain's
    feature export needs.
    """
    return session_class(runtime)(path, threads=threads, spin=spin)
