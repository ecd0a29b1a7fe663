"""The interface every runtime implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_node.runtimes.registry import Runtime

__all__ = ["Session", "Tensor"]

Tensor = npt.NDArray[np.float32] | npt.NDArray[np.uint8]


class Session(Protocol):
    """One loaded model file. ``run`` is called by one thread at a time (sessions are not shared)."""

    @property
    def runtime(self) -> Runtime: ...

    def run(self, tensor: Tensor) -> npt.NDArray[np.float32]:
        """The model's output for one input tensor, as a new float32 array of shape (1, classes).

        Raises InferenceError when the runtime fails.
        """
        ...
