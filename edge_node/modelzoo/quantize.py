"""Static INT8 quantisation of an FP32 ONNX classifier with onnxruntime.quantization."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edge_node.errors import BundleError

__all__ = ["quantize_int8"]

log = logging.getLogger(__name__)


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibration tensors to ORT's calibrator one at a time."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        self._name = input_name
        self._tensors = tensors
        self._it: Iterator[np.ndarray] = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._it, None)
        return None if tensor is None else {self._name: np.ascontiguousarray(tensor, dtype=np.float32)}

    def rewind(self) -> None:
        self._it = iter(self._tensors)


def quantize_int8(
    fp32_onnx: Path, out: Path, calibration: Sequence[np.ndarray], *, arch: str
) -> dict[str, object]:
    """Quantise ``fp32_onnx`` to ``out``; return the recipe for the bundle manifest."""
    if not calibration:
        raise BundleError("INT8 quantisation needs calibration images; pass at least one")
    model = onnx.load(str(fp32_onnx))
    input_name = model.graph.input[0].name
    recipe: dict[str, object] = {
        "format": "QDQ",
        "per_channel": True,
        "method": "MinMax",
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "reduce_range": False,
        "op_types": None,
        "nodes_to_exclude": [],
        "calibration_images": len(calibration),
        "arch": arch,
    }
    quantize_static(
        str(fp32_onnx),
        str(out),
        _Reader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    log.info("quantised %s -> %s (%s)", fp32_onnx.name, out.name, recipe)
    return recipe
