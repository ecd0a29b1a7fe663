"""LiteRT (TensorFlow Lite) with XNNPACK on the CPU: the ``litert`` extra (``ai-edge-litert``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_node.errors import MissingExtraError
from edge_node.runtimes.base import Tensor

__all__ = ["LiteRTSession"]


class LiteRTSession:
    """Placeholder until the LiteRT runtime lands: refuses with the extra to install."""

    runtime: Literal["litert"] = "litert"

    def __init__(self, path: Path, *, threads: int) -> None:
        del path, threads
        raise MissingExtraError("the LiteRT runtime", "litert")

    def run(self, tensor: Tensor) -> npt.NDArray[np.float32]:  # pragma: no cover - never constructed
        raise NotImplementedError
