"""The one list of inference runtimes: what each needs installed, how to install it, which class opens its files.

Everything that names runtimes (the settings, the device choice, ``edge-node bench``, the toolchain's build,
evaluation and feature export) reads this table, so adding a runtime is one entry here and one session module.
Nothing here imports a runtime: :func:`session_class` imports the session module when a file is opened.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Literal, Protocol, get_args

if TYPE_CHECKING:
    from pathlib import Path

    from edge_node.runtimes.base import Session

__all__ = ["REGISTRY", "RUNTIMES", "Runtime", "RuntimeInfo", "info", "installed", "session_class", "versions"]

Runtime = Literal["onnxruntime", "litert"]
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)  # the order of preference when two are equally fast


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """One runtime: the module it imports, the distribution and extra that provide it, its files."""

    name: Runtime
    title: str  # how messages name it
    module: str  # imported to run a file ("ai_edge_litert")
    package: str  # the PyPI distribution of that module, for versions ("ai-edge-litert")
    extra: str | None  # the project's pip extra that installs it; None: a core dependency
    session: str  # "module:Class" of its Session, imported only when a file is opened
    suffix: str  # the file suffix the toolchain writes
    layout: Literal["NCHW", "NHWC"] | None  # the input layout its files take; None: the bundle's own

    @property
    def install(self) -> str:
        """The command that installs it, for error messages."""
        if self.extra is None:
            return f"pip install {self.package}"
        return f"pip install 'ghostpi-edge-node[{self.extra}]'"


REGISTRY: dict[Runtime, RuntimeInfo] = {
    "onnxruntime": RuntimeInfo(
        name="onnxruntime",
        title="ONNX Runtime",
        module="onnxruntime",
        package="onnxruntime",
        extra=None,
        session="edge_node.runtimes.onnx:OrtSession",
        suffix="onnx",
        layout=None,
    ),
    "litert": RuntimeInfo(
        name="litert",
        title="the LiteRT runtime",
        module="ai_edge_litert",
        package="ai-edge-litert",
        extra="litert",
        session="edge_node.runtimes.litert:LiteRTSession",
        suffix="tflite",
        layout="NHWC",  # TFLite files take NHWC: no transposes in the graph
    ),
}


def info(runtime: str) -> RuntimeInfo:
    """The entry for ``runtime``; a ValueError that lists the known ones otherwise."""
    try:
        return REGISTRY[runtime]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}") from None


def installed(runtime: Runtime) -> bool:
    """Whether the Python package behind ``runtime`` can be imported here."""
    return importlib.util.find_spec(info(runtime).module) is not None


def versions() -> dict[Runtime, str | None]:
    """Each runtime's installed version (None: not installed), for the device choice's key and reports."""
    found: dict[Runtime, str | None] = {}
    for name, entry in REGISTRY.items():
        try:
            found[name] = metadata.version(entry.package)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


class _Opener(Protocol):
    """What a session class looks like from here: built from a path, a thread count and the spin switch."""

    def __call__(self, path: Path, *, threads: int, spin: bool = False) -> Session: ...


def session_class(runtime: Runtime) -> _Opener:
    """The Session class of ``runtime``, importing its module now (not the runtime: that happens on open)."""
    module, _, name = info(runtime).session.partition(":")
    opener: _Opener = getattr(importlib.import_module(module), name)
    return opener
