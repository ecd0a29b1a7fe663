"""Static INT8 quantisation of an FP32 ONNX classifier with onnxruntime.quantization.

The recipe (docs/quantization.md has every variant measured): QDQ format, per-channel symmetric INT8
weights, asymmetric UINT8 activations (U8S8, the fast VNNI path), MinMax calibration on real
preprocessed images. Two graph-level choices on top of ORT's defaults:

* Concat inputs share the output's quantisation range, so ONNX Runtime's QLinearConcat copies bytes
  instead of requantising each input through a lookup table (what TFLite does as well).
* Per-architecture node exclusions, if any (``EXCLUDE``), stay in FP32.

Calibration runs once; its tensor ranges are cached and re-used for the final quantisation pass that
applies the range overrides.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData
from onnxruntime.quantization.quantize import load_tensors_data

from edge_node.errors import BundleError

__all__ = ["QuantRecipe", "concat_range_overrides", "quantize_int8", "recipe_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantRecipe:
    """Every knob of one quantisation; ``asdict`` of it goes into the bundle manifest."""

    format: str = "QDQ"  # or "QOperator"
    per_channel: bool = True
    method: str = "MinMax"  # MinMax | Entropy | Percentile | Distribution
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    reduce_range: bool = False
    activation_symmetric: bool = False
    share_concat_ranges: bool = True
    op_types: tuple[str, ...] = ()  # empty: every op type ORT can quantise
    nodes_to_exclude: tuple[str, ...] = ()
    op_types_to_exclude: tuple[str, ...] = ()  # resolved to node names against the FP32 graph
    exclude_stem: bool = False  # keep the node(s) reading the image input in FP32
    percentile: float = 99.999
    extra: dict[str, object] = field(default_factory=dict)


# Measured per-architecture recipes; anything else gets the default.
_RECIPES: dict[str, QuantRecipe] = {}


def recipe_for(arch: str) -> QuantRecipe:
    """The measured recipe for ``arch`` (exact timm name or family prefix), else the default one."""
    for key, recipe in _RECIPES.items():
        if arch == key or arch.startswith(key):
            return recipe
    return QuantRecipe()


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


def concat_range_overrides(model: onnx.ModelProto, ranges: TensorsData) -> dict[str, list[dict[str, object]]]:
    """TensorQuantOverrides giving every Concat input the (wider) range of the Concat output.

    Only inputs produced by a single-output node and consumed by nothing but this Concat's data flow are
    widened: a tensor feeding two Concats keeps its own range (the later one would silently win).
    """
    uses: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Concat":
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
    overrides: dict[str, list[dict[str, object]]] = {}
    for node in model.graph.node:
        if node.op_type != "Concat" or node.output[0] not in ranges:
            continue
        low, high = (np.float32(v) for v in ranges[node.output[0]].range_value)  # ORT wants numpy scalars
        for name in node.input:
            if name in ranges and uses[name] == 1:
                overrides[name] = [{"rmin": low, "rmax": high}]
    return overrides


def _excluded_nodes(model: onnx.ModelProto, recipe: QuantRecipe) -> list[str]:
    names = list(recipe.nodes_to_exclude)
    names += [n.name for n in model.graph.node if n.op_type in recipe.op_types_to_exclude]
    if recipe.exclude_stem:
        image = model.graph.input[0].name
        names += [n.name for n in model.graph.node if image in n.input]
    return names


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    calibration: Sequence[np.ndarray],
    *,
    arch: str,
    recipe: QuantRecipe | None = None,
) -> dict[str, object]:
    """Quantise ``fp32_onnx`` to ``out``; return the recipe (plus calibration facts) for the manifest."""
    if not calibration:
        raise BundleError("INT8 quantisation needs calibration images; pass at least one")
    recipe = recipe or recipe_for(arch)
    try:
        model = onnx.load(str(fp32_onnx))
    except (OSError, DecodeError) as exc:
        raise BundleError(f"cannot read {fp32_onnx}: {exc}; export the FP32 model first") from exc
    input_name = model.graph.input[0].name
    excluded = _excluded_nodes(model, recipe)
    extra: dict[str, object] = {
        "ActivationSymmetric": recipe.activation_symmetric,
        "WeightSymmetric": True,
        **recipe.extra,
    }
    if recipe.method == "Percentile":
        extra["CalibPercentile"] = recipe.percentile
    kwargs: dict[str, object] = {
        "quant_format": QuantFormat.QDQ if recipe.format == "QDQ" else QuantFormat.QOperator,
        "op_types_to_quantize": list(recipe.op_types) or None,
        "per_channel": recipe.per_channel,
        "reduce_range": recipe.reduce_range,
        "activation_type": QuantType[recipe.activation_type],
        "weight_type": QuantType[recipe.weight_type],
        "nodes_to_exclude": excluded,
        "calibrate_method": CalibrationMethod[recipe.method],
    }
    overrides: dict[str, list[dict[str, object]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="edge-quant-") as tmp:
            cache = Path(tmp) / "calibration.json"
            reader = _Reader(input_name, calibration)
            quantize_static(
                str(fp32_onnx), str(out), reader, extra_options=extra, calibration_cache_path=cache, **kwargs
            )
            if recipe.share_concat_ranges:
                overrides = concat_range_overrides(model, load_tensors_data(cache))
                if overrides:  # second pass: ranges from the cache, no new calibration
                    extra["TensorQuantOverrides"] = overrides
                    quantize_static(
                        str(fp32_onnx), str(out), None, extra_options=extra, calibration_cache_path=cache, **kwargs
                    )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise BundleError(f"INT8 quantisation of {fp32_onnx.name} failed: {exc}") from exc
    result: dict[str, object] = {
        **asdict(recipe),
        "op_types": list(recipe.op_types),
        "nodes_to_exclude": excluded,
        "op_types_to_exclude": list(recipe.op_types_to_exclude),
        "shared_concat_inputs": len(overrides),
        "calibration_images": len(calibration),
        "arch": arch,
    }
    log.info("quantised %s -> %s with %s", fp32_onnx.name, out.name, result)
    return result
