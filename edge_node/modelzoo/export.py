"""PyTorch -> ONNX, one static-shape file per resolution, checked against PyTorch on real images.

``torch.onnx.export(dynamo=True)`` is used: the legacy TorchScript exporter produced wrong outputs for
EfficientNet-Lite0's TF 'same' padding on this torch. Every file is run in ONNX Runtime and compared with
PyTorch; a difference above the tolerance fails the build instead of shipping a silently broken model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge_node.errors import BundleError
from edge_node.runtimes import Runtime, open_session

if TYPE_CHECKING:
    import torch

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "max_abs_diff", "torch_logits"]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18


def export_onnx(
    model: torch.nn.Module, resolution: int, out: Path, *, output_names: Sequence[str] = (OUTPUT_NAME,)
) -> Path:
    """Export ``model`` with a fixed (1, 3, resolution, resolution) input to a single self-contained file."""
    import torch

    example = (torch.zeros(1, 3, resolution, resolution),)
    chatter = io.StringIO()  # the exporter prints its steps on stdout, which must stay clean for --json
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(out),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                opset_version=OPSET,
            )
    except Exception as exc:  # the exporter raises many internal error types
        raise BundleError(f"ONNX export at {resolution}px failed: {type(exc).__name__}: {exc}") from exc
    log.debug("exporter output: %s", chatter.getvalue())
    return out


def torch_logits(model: torch.nn.Module, inputs: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """PyTorch logits for a list of (1, 3, R, R) inputs (or NHWC (1, R, R, 3)), stacked to (N, classes)."""
    import torch

    with torch.no_grad():
        batch = torch.from_numpy(np.concatenate(list(inputs)))
        if batch.shape[-1] == 3 and batch.shape[1] != 3:  # NHWC
            batch = batch.permute(0, 3, 1, 2).contiguous()
        return np.asarray(model(batch).numpy(), dtype=np.float32)


def max_abs_diff(
    path: Path,
    reference: npt.NDArray[np.float32],
    inputs: Sequence[npt.NDArray[np.float32]],
    *,
    tolerance: float,
    runtime: Runtime = "onnxruntime",
) -> float:
    """Largest |runtime - PyTorch| logit over ``inputs``; raise BundleError above ``tolerance``."""
    sess = open_session(path, runtime, threads=2)
    got = np.concatenate([sess.run(x) for x in inputs])
    diff = float(np.max(np.abs(got - reference)))
    if not np.isfinite(diff) or diff > tolerance:
        raise BundleError(
            f"{path.name}: {runtime} differs from PyTorch by {diff:.3g} (tolerance {tolerance:.3g}) on "
            "real images; the export is wrong, refusing to ship it"
        )
    log.info("%s vs PyTorch on %d real images: max |diff| %.3g", path.name, len(inputs), diff)
    return diff
