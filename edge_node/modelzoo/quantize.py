"""Static INT8 quantisation of an FP32 ONNX classifier with onnxruntime.quantization.

The recipe (docs/quantization.md has every variant measured): QDQ format, per-channel symmetric INT8
weights, asymmetric UINT8 activations (U8S8, the fast VNNI path), MinMax calibration on real
preprocessed images. On top of ORT's defaults:

* exact graph passes on the INT8 file's source graph only (the FP32 file keeps the form ORT's FP32
  kernels prefer): spatial ReduceMean -> GlobalAveragePool, exact 2x nearest Resizes on a flat NCHW view,
  optionally AveragePool(2x2) folded into the following 1x1 Conv;
* Concat inputs share the output's quantisation range, so ONNX Runtime's QLinearConcat copies bytes
  instead of requantising each input through a lookup table (what TFLite does as well);
* recipes that hold on x86 without VNNI: 7-bit weights for every dense (not depthwise) Conv and Gemm, whose
  U8S8 kernels there add u8*s8 pairs into a saturating int16 (``reduced_range_overrides``), and a classifier
  with float logits on INT8 weights (``weight_only``), because UINT8 logits tie or swap the top classes;
* per-architecture recipes (``recipe_for``): calibration method and nodes kept in FP32.

Calibration runs once; its tensor ranges are cached and re-used for the final quantisation pass that
applies the range overrides.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
from onnxruntime.quantization.quantize import load_tensors_data

from edge_node.errors import BundleError
from edge_node.modelzoo.ranges import calibrate

__all__ = [
    "QuantRecipe",
    "concat_range_overrides",
    "flat_resizes",
    "global_pools",
    "pooled_convs",
    "quantize_int8",
    "recipe_for",
    "reduced_range_overrides",
    "weight_only",
]

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
    flat_resizes: bool = True  # exact 2x nearest Resizes as Reshape -> Resize -> Reshape (see flat_resizes)
    pooled_convs: bool = False  # AveragePool(2x2, s2) + 1x1 Conv -> one 2x2 stride-2 Conv (4x those weights)
    op_types: tuple[str, ...] = ()  # empty: every op type ORT can quantise
    nodes_to_exclude: tuple[str, ...] = ()
    op_types_to_exclude: tuple[str, ...] = ()  # resolved to node names against the FP32 graph
    exclude_stem: bool = False  # keep the node(s) reading the image input in FP32
    scopes_to_exclude: tuple[str, ...] = ()  # torch module paths (dynamo exports record them) kept in FP32
    # Op types left with float outputs, on INT8 weights (DequantizeLinear in the file): the classifier's UINT8
    # logits tie or swap the top classes, while its 1.3 M FP32 weights would double the file.
    weight_only_op_types: tuple[str, ...] = ("Gemm",)
    # 7-bit weights for convolutions that are not depthwise (and Gemm/MatMul): ORT's x86 U8S8 GEMM kernels
    # without VNNI add pairs of u8*s8 products in int16 (VPMADDUBSW), which saturates with 8-bit weights;
    # 7 bits cannot (2 * 255 * 64 < 32768). Depthwise kernels widen to 16 bits first and keep 8-bit weights.
    reduce_range_dense: bool = True
    percentile: float = 99.999
    # (resolution, percentile) pairs overriding ``percentile`` for that input size: the best clip differs by size
    percentile_at: tuple[tuple[int, float], ...] = ()
    extra: dict[str, object] = field(default_factory=dict)

    def at(self, resolution: int) -> QuantRecipe:
        """The recipe as used for one input size: its percentile resolved, so the manifest records what ran."""
        return replace(self, percentile=dict(self.percentile_at).get(resolution, self.percentile), percentile_at=())


# Measured per-architecture recipes (docs/quantization.md); anything else gets the default.
_RECIPES: dict[str, QuantRecipe] = {
    # GhostNet(V2): the DFC branch's pool folded into its conv (INT8 ~7 % faster, INT8 file ~35 % larger).
    "ghostnet": QuantRecipe(pooled_convs=True),
    # The first two blocks (112 px, 16-24 channels) stay FP32 (0.2 % of the weights) and activation ranges
    # clip the 0.001 % tails at 224 px (99.99 lost 0.6 top-1 points on the arm64 lane's held-out images, 99.999
    # none), the 0.01 % tails at 192 and 160 px (there 99.999 lost 1.3 and 0.5 points more than 99.99);
    # docs/quantization.md has the figures, with and without VNNI.
    # On top of the defaults (7-bit dense weights, float-output classifier): the stem conv stays FP32 too.
    "efficientnet_lite0": QuantRecipe(
        method="Percentile",
        percentile=99.999,
        percentile_at=((192, 99.99), (160, 99.99)),
        scopes_to_exclude=("blocks.0", "blocks.1"),
        exclude_stem=True,
    ),
}


def recipe_for(arch: str) -> QuantRecipe:
    """The measured recipe for ``arch`` (exact timm name or family prefix), else the default one."""
    for key, recipe in _RECIPES.items():
        if arch == key or arch.startswith(key):
            return recipe
    return QuantRecipe()


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


def reduced_range_overrides(model: onnx.ModelProto, excluded: Sequence[str] = ()) -> dict[str, list[dict[str, object]]]:
    """TensorQuantOverrides giving the weights of every non-depthwise Conv, Gemm and MatMul 7-bit range.

    One dict per output channel (ORT wants as many as the per-channel axis has), all alike.
    """
    inits = {t.name: t for t in model.graph.initializer}
    skip = set(excluded)
    overrides: dict[str, list[dict[str, object]]] = {}
    for node in model.graph.node:
        if node.name in skip or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("group", 1) != 1:
            continue  # depthwise (grouped): ORT's kernels for it do not saturate
        axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and attrs.get("transB", 0)) else 1
        overrides[weight.name] = [{"reduce_range": True, "axis": axis} for _ in range(weight.dims[axis])]
    return overrides


def global_pools(model: onnx.ModelProto) -> int:
    """Rewrite spatial ``ReduceMean(axes=[2, 3])`` of 4-D tensors into GlobalAveragePool, in place.

    The dynamo exporter writes spatial means that way; ORT quantises GlobalAveragePool
    (QLinearGlobalAveragePool) but leaves ReduceMean in FP32 between a DequantizeLinear/QuantizeLinear pair.
    ``keepdims=0`` becomes GlobalAveragePool + Squeeze. Returns the number of means rewritten.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ranks = _ranks(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = consts.get(node.input[1])
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        count += 1
        if attrs.get("keepdims", 1) == 1:
            nodes[-1] = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
            continue
        pooled, axes_name = f"{node.output[0]}_pooled", f"{node.output[0]}_squeeze_axes"
        if opset >= 13:  # Squeeze takes its axes as an input since opset 13
            model.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), axes_name))
            squeeze = helper.make_node("Squeeze", [pooled, axes_name], list(node.output), name=f"{node.name}_sq")
        else:
            squeeze = helper.make_node("Squeeze", [pooled], list(node.output), name=f"{node.name}_sq", axes=[2, 3])
        nodes[-1:] = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name), squeeze]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def flat_resizes(model: onnx.ModelProto) -> int:
    """Rewrite exact 2x nearest Resizes of (n, c, h, w) tensors as Reshape -> Resize -> Reshape, in place.

    Upsampling the (n, 1, c*h, w) view by 2 is the same per-channel nearest upsample (output row
    ``c*2h + y`` reads ``floor((c*2h + y) / 2) = c*h + floor(y / 2)``). The Reshapes keep ORT's layout
    optimiser from moving the UINT8 Resize into NHWC, where it runs a generic per-element loop instead of
    its NCHW 2x kernel (GhostNetV2's DFC gate: docs/quantization.md). Returns the number rewritten.
    """
    shapes = _shapes(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
        if (
            attrs.get("mode", b"nearest") != b"nearest"
            or attrs.get("coordinate_transformation_mode", b"half_pixel") != b"asymmetric"
            or attrs.get("nearest_mode", b"round_prefer_floor") != b"floor"
            or src is None
            or dst is None
            or len(src) != 4
            or list(dst) != [src[0], src[1], 2 * src[2], 2 * src[3]]
        ):
            continue
        n, c, h, w = src
        out = node.output[0]
        names = [f"{out}_flat_{k}" for k in ("shape_in", "shape_out", "scales", "in", "up")]
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([n, 1, c * h, w], np.int64), names[0]),
                numpy_helper.from_array(np.array([n, c, 2 * h, 2 * w], np.int64), names[1]),
                numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), names[2]),
            ]
        )
        resize = helper.make_node("Resize", [names[3], "", names[2]], [names[4]], name=f"{node.name}_flat")
        resize.attribute.extend(node.attribute)
        nodes[-1:] = [
            helper.make_node("Reshape", [node.input[0], names[0]], [names[3]], name=f"{node.name}_flat_in"),
            resize,
            helper.make_node("Reshape", [names[4], names[1]], [out], name=f"{node.name}_flat_out"),
        ]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def pooled_convs(model: onnx.ModelProto) -> int:
    """Fold ``AveragePool(2x2, stride 2)`` into the 1x1 Conv that alone reads it, in place.

    The mean of a 2x2 window followed by a 1x1 convolution is one 2x2 stride-2 convolution with the weights
    divided by 4. ORT's QLinearAveragePool is slow and each op boundary is a requantisation; the FP32 file
    keeps the pool (ORT's FP32 pool + 1x1 conv is faster than the 2x2 conv). Returns the number folded.
    """
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    drop: list[onnx.NodeProto] = []
    for pool in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        users = readers.get(pool.output[0], [])
        if (
            pool.op_type != "AveragePool"
            or list(attrs.get("kernel_shape", [])) != [2, 2]
            or list(attrs.get("strides", [])) != [2, 2]
            or any(attrs.get("pads", [0]))
            or attrs.get("ceil_mode", 0)
            or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"
            or len(users) != 1
            or users[0].op_type != "Conv"
            or users[0].input[1] not in inits
        ):
            continue
        conv = users[0]
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if (
            weight.shape[2:] != (1, 1)
            or conv_attrs.get("group", 1) != 1
            or any(conv_attrs.get("pads", [0]))
            or any(s != 1 for s in conv_attrs.get("strides", [1, 1]))
            or any(d != 1 for d in conv_attrs.get("dilations", [1, 1]))
        ):
            continue
        inits[conv.input[1]].CopyFrom(
            numpy_helper.from_array((np.tile(weight, (1, 1, 2, 2)) / 4).astype(weight.dtype), conv.input[1])
        )
        conv.input[0] = pool.input[0]
        del conv.attribute[:]
        conv.attribute.extend([helper.make_attribute("kernel_shape", [2, 2]), helper.make_attribute("strides", [2, 2])])
        drop.append(pool)
    for pool in drop:
        model.graph.node.remove(pool)
    return len(drop)


def weight_only(model: onnx.ModelProto, op_types: Sequence[str], *, reduce_range: bool = False) -> int:
    """Store the FP32 weights of unquantised ``op_types`` nodes (Gemm, MatMul, Conv) as INT8 + DequantizeLinear.

    Symmetric, per output channel, in place; ``reduce_range``: 7 bits. The node's output stays float (ORT may
    still run it as a QGemm with a float output when its input comes from a DequantizeLinear, hence 7 bits
    where 8 could saturate). Returns the number of weights rewritten.
    """
    peak = 64.0 if reduce_range else 127.0
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        weight = node.input[1] if node.op_type in op_types and len(node.input) > 1 else ""
        if weight in inits and readers[weight] == 1 and inits[weight].data_type == onnx.TensorProto.FLOAT:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            w = numpy_helper.to_array(inits[weight])
            axis = 1 if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0)) else 0
            reduce = tuple(i for i in range(w.ndim) if i != axis)
            scale = (np.abs(w).max(axis=reduce) / peak).astype(np.float32)
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(w / np.expand_dims(scale, reduce)), -peak, peak).astype(np.int8)
            names = (f"{weight}_wq", f"{weight}_wscale", f"{weight}_wzero")
            inits[weight].CopyFrom(numpy_helper.from_array(q, names[0]))
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(scale, names[1]),
                    numpy_helper.from_array(np.zeros_like(q, shape=scale.shape), names[2]),
                ]
            )
            nodes.append(helper.make_node("DequantizeLinear", list(names), [weight], name=f"{weight}_dq", axis=axis))
            count += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static tensor shapes from ONNX shape inference (dims that are not plain numbers are left out)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    shapes = {}
    for info in infos:
        tensor = info.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[info.name] = [d.dim_value for d in tensor.shape.dim]
    return shapes


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input]
    return {i.name: len(i.type.tensor_type.shape.dim) for i in infos if i.type.tensor_type.HasField("shape")}


def _excluded_nodes(model: onnx.ModelProto, recipe: QuantRecipe) -> list[str]:
    names = list(recipe.nodes_to_exclude)
    names += [
        n.name for n in model.graph.node if n.op_type in (*recipe.op_types_to_exclude, *recipe.weight_only_op_types)
    ]
    if recipe.exclude_stem:
        image = model.graph.input[0].name
        names += [n.name for n in model.graph.node if image in n.input]
    if recipe.scopes_to_exclude:
        wanted = set(recipe.scopes_to_exclude)
        scoped = [n.name for n in model.graph.node if wanted & _name_scopes(n)]
        if not scoped:
            raise BundleError(
                f"the recipe keeps modules {sorted(wanted)} in FP32 but the ONNX file names no such modules; "
                "export it with torch.onnx.export(dynamo=True), which records module paths"
            )
        names += scoped
    return names


def _name_scopes(node: onnx.NodeProto) -> set[str]:
    """Module paths the torch dynamo exporter stored on ``node`` (empty for other exporters)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return {s.strip(" '\"") for s in prop.value.strip("[]").split(",")}
    return set()


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
    recipe = (recipe or recipe_for(arch)).at(int(calibration[0].shape[-1]))
    try:
        model = onnx.load(str(fp32_onnx))
    except (OSError, DecodeError) as exc:
        raise BundleError(f"cannot read {fp32_onnx}: {exc}; export the FP32 model first") from exc
    input_name = model.graph.input[0].name
    pools = global_pools(model)
    resizes = flat_resizes(model) if recipe.flat_resizes else 0
    folded = pooled_convs(model) if recipe.pooled_convs else 0
    if pools or resizes or folded:
        del model.graph.value_info[:]  # stale shapes of rewritten tensors; the quantiser infers them again
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
    reduced = reduced_range_overrides(model, excluded) if recipe.reduce_range_dense else {}
    if reduced:
        extra["TensorQuantOverrides"] = reduced
    try:
        with tempfile.TemporaryDirectory(prefix="edge-quant-") as tmp:
            cache = Path(tmp) / "calibration.json"
            source = Path(tmp) / "fp32.onnx"
            onnx.save(model, str(source))
            # Our own calibration pass (ORT's keeps every image's activations: ~6 GB for Lite0), then ORT
            # quantises from the cached ranges, exactly as if it had calibrated itself.
            options: dict[str, object] = {"percentile": recipe.percentile} if recipe.method == "Percentile" else {}
            ranges = calibrate(
                source, input_name, calibration, method=recipe.method, workdir=Path(tmp),
                op_types=recipe.op_types, options=options,
            )  # fmt: skip
            save_tensors_data(ranges, cache)
            quantize_static(str(source), str(out), None, extra_options=extra, calibration_cache_path=cache, **kwargs)
            if recipe.share_concat_ranges:
                overrides = concat_range_overrides(model, load_tensors_data(cache))
                if overrides:  # second pass: ranges from the cache, no new calibration
                    extra["TensorQuantOverrides"] = {**reduced, **overrides}
                    quantize_static(
                        str(source), str(out), None, extra_options=extra, calibration_cache_path=cache, **kwargs
                    )
        weights_only = 0
        if recipe.weight_only_op_types:
            quantized = onnx.load(str(out))
            weights_only = weight_only(quantized, recipe.weight_only_op_types, reduce_range=recipe.reduce_range_dense)
            onnx.save(quantized, str(out))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise BundleError(f"INT8 quantisation of {fp32_onnx.name} failed: {exc}") from exc
    result: dict[str, object] = {
        **asdict(recipe),
        "op_types": list(recipe.op_types),
        "nodes_to_exclude": excluded,
        "op_types_to_exclude": list(recipe.op_types_to_exclude),
        "scopes_to_exclude": list(recipe.scopes_to_exclude),
        "weight_only_op_types": list(recipe.weight_only_op_types),
        "weight_only": weights_only,
        "reduced_range_weights": len(reduced),
        "shared_concat_inputs": len(overrides),
        "reduce_mean_to_global_pool": pools,
        "flat_resizes": resizes,
        "pooled_convs": folded,
        "calibration_images": len(calibration),
        "arch": arch,
    }
    log.info("quantised %s -> %s with %s", fp32_onnx.name, out.name, result)
    return result
