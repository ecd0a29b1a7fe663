"""quantize_int8 and its graph passes on small real models, run through real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edge_node.errors import BundleError
from edge_node.modelzoo.export import export_onnx
from edge_node.modelzoo.quantize import QuantRecipe, global_pools, quantize_int8

RES = 48


class SmallNet(torch.nn.Module):
    """Conv/BN/ReLU stack with a depthwise conv, a two-branch Concat and a spatial mean, like the zoo."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.BatchNorm2d(32), torch.nn.ReLU())
        self.dw = torch.nn.Sequential(
            torch.nn.Conv2d(32, 32, 3, 1, 1, groups=32), torch.nn.BatchNorm2d(32), torch.nn.ReLU()
        )
        self.left = torch.nn.Conv2d(32, 48, 1)
        self.right = torch.nn.Conv2d(32, 48, 3, 1, 1)
        self.head = torch.nn.Conv2d(96, 128, 1)
        self.fc = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        x = torch.relu(self.head(x)).mean((2, 3))
        logits: torch.Tensor = self.fc(x)
        return logits


def _inputs(count: int, seed: int) -> list[np.ndarray]:
    """Smooth random 'images' (low-frequency patterns), normalised like the node's preprocessing does."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:RES, 0:RES] / RES
    out = []
    for _ in range(count):
        f = rng.uniform(0.5, 4, size=(3, 2))
        phase = rng.uniform(0, 6.3, size=(3, 1, 1))
        img = np.sin(2 * np.pi * (f[:, :1, None] * yy + f[:, 1:, None] * xx) + phase)
        out.append((img + 0.2 * rng.standard_normal(img.shape))[None].astype(np.float32))
    return out


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        for bn in net.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                assert bn.running_mean is not None and bn.running_var is not None  # tracked by default
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
    return export_onnx(net, RES, tmp_path_factory.mktemp("small") / "fp32.onnx")


def _run(path: Path, inputs: list[np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x})[0] for x in inputs])


def test_quantize_int8_gives_a_smaller_model_that_agrees(fp32_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    recipe = quantize_int8(
        fp32_model, out, _inputs(24, seed=1), arch="small", recipe=QuantRecipe(weight_only_op_types=())
    )
    onnx.checker.check_model(str(out))
    graph = onnx.load(str(out)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) > 29_000  # all conv and linear weights
    assert out.stat().st_size < 0.4 * fp32_model.stat().st_size

    held_out = _inputs(32, seed=2)  # not the calibration inputs
    a, b = _run(fp32_model, held_out), _run(out, held_out)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98, cosine
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9

    for key in ("format", "per_channel", "method", "activation_type", "weight_type", "reduce_range"):
        assert key in recipe
    assert recipe["format"] == "QDQ" and recipe["per_channel"] is True
    assert recipe["nodes_to_exclude"] == []
    assert recipe["calibration_images"] == 24
    assert recipe["arch"] == "small"
    assert recipe["reduce_mean_to_global_pool"] == 1  # the dynamo exporter's spatial mean
    assert recipe["shared_concat_inputs"] == 2


def test_concat_inputs_share_the_output_range(fp32_model: Path, tmp_path: Path) -> None:
    """So ORT's QLinearConcat copies bytes instead of requantising each input."""
    out = tmp_path / "int8.onnx"
    quantize_int8(fp32_model, out, _inputs(8, seed=1), arch="small")
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    concat = next(n for n in graph.node if n.op_type == "Concat")
    after = next(n for n in graph.node if concat.output[0] in n.input)
    assert after.op_type == "QuantizeLinear"
    for name in concat.input:
        dq = producer[name]
        assert dq.op_type == "DequantizeLinear"
        assert consts[dq.input[1]] == pytest.approx(consts[after.input[1]])
        assert consts[dq.input[2]] == consts[after.input[2]]

    unshared = tmp_path / "unshared.onnx"
    recipe = quantize_int8(
        fp32_model, unshared, _inputs(8, seed=1), arch="small", recipe=QuantRecipe(share_concat_ranges=False)
    )
    assert recipe["shared_concat_inputs"] == 0


def test_exclude_stem_keeps_the_first_conv_in_float(fp32_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    recipe = quantize_int8(fp32_model, out, _inputs(8, seed=1), arch="small", recipe=QuantRecipe(exclude_stem=True))
    graph = onnx.load(str(out)).graph
    image = graph.input[0].name
    stem = next(n for n in graph.node if image in n.input)
    assert stem.op_type == "Conv"
    excluded = recipe["nodes_to_exclude"]
    assert isinstance(excluded, list) and stem.name in excluded  # with the weight-only classifier
    weight = next(t for t in graph.initializer if t.name == stem.input[1])
    assert weight.data_type == TensorProto.FLOAT


def test_global_pools_rewrites_only_spatial_means() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])
    axes_hw = numpy_helper.from_array(np.array([2, 3], np.int64), "axes_hw")
    axes_c = numpy_helper.from_array(np.array([1], np.int64), "axes_c")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes_hw"], ["pooled"], keepdims=1),
        helper.make_node("ReduceMean", ["x", "axes_c"], ["chan"], keepdims=1),
        helper.make_node("ReduceMean", ["x", "axes_hw"], ["flat"], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("pooled", "chan", "flat")]
    graph = helper.make_graph(nodes, "g", [x], outputs, [axes_hw, axes_c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    data = np.random.default_rng(0).standard_normal((1, 8, 5, 5)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": data})

    assert global_pools(model) == 2
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "ReduceMean", "GlobalAveragePool", "Squeeze"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": data})
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_quantize_int8_refuses_bad_input(fp32_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="calibration"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", [], arch="small")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BundleError, match=r"junk\.onnx"):
        quantize_int8(junk, tmp_path / "x.onnx", _inputs(2, seed=0), arch="small")


def test_a_recipe_naming_absent_modules_is_refused(fp32_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such modules"):
        quantize_int8(
            fp32_model,
            tmp_path / "x.onnx",
            _inputs(2, seed=0),
            arch="small",
            recipe=QuantRecipe(scopes_to_exclude=("blocks.9",)),
        )


def test_scopes_to_exclude_keeps_those_modules_in_float(fp32_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    recipe = quantize_int8(
        fp32_model, out, _inputs(8, seed=1), arch="small", recipe=QuantRecipe(scopes_to_exclude=("head",))
    )
    excluded = recipe["nodes_to_exclude"]
    assert isinstance(excluded, list) and excluded
    graph = onnx.load(str(out)).graph
    float_convs = [n for n in graph.node if n.op_type == "Conv" and n.name in excluded]
    weights = {t.name: t for t in graph.initializer}
    assert float_convs and all(weights[n.input[1]].data_type == TensorProto.FLOAT for n in float_convs)


def test_lite0_recipe_is_measured_one() -> None:
    from edge_node.modelzoo.quantize import recipe_for

    lite0 = recipe_for("efficientnet_lite0")
    assert lite0.method == "Percentile" and lite0.scopes_to_exclude == ("blocks.0", "blocks.1")
    assert recipe_for("ghostnetv2_100") == QuantRecipe(pooled_convs=True)
    assert recipe_for("mobilenetv3_large_100") == QuantRecipe()
    # the clip is measured per input size: 99.999 at 224 px, 99.99 at 192 and 160 (docs/quantization.md)
    assert [lite0.at(r).percentile for r in (224, 192, 160)] == [99.999, 99.99, 99.99]
    assert lite0.at(192).percentile_at == () and QuantRecipe().at(160) == QuantRecipe()


class GateNet(torch.nn.Module):
    """GhostNetV2's DFC pattern: AvgPool(2) -> 1x1 conv -> sigmoid -> nearest upsample -> multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.main = torch.nn.Conv2d(3, 16, 3, 1, 1)
        self.reduce = torch.nn.Conv2d(3, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.reduce(torch.nn.functional.avg_pool2d(x, 2, 2)))
        main: torch.Tensor = self.main(x)
        return main * torch.nn.functional.interpolate(gate, size=x.shape[-2:], mode="nearest")


def test_int8_graph_passes_keep_the_function(tmp_path: Path) -> None:
    """flat_resizes and pooled_convs are exact rewrites: compare FP32 graphs before and after."""
    from edge_node.modelzoo.quantize import flat_resizes, pooled_convs

    torch.manual_seed(0)
    path = export_onnx(GateNet().eval(), RES, tmp_path / "gate.onnx")
    model = onnx.load(str(path))
    x = _inputs(1, seed=3)[0]
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    assert flat_resizes(model) == 1
    assert pooled_convs(model) == 1
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "AveragePool" not in ops and ops.count("Reshape") == 2
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)

    recipe = quantize_int8(path, tmp_path / "int8.onnx", _inputs(8, seed=1), arch="ghostnetv2_100")
    assert recipe["flat_resizes"] == 1 and recipe["pooled_convs"] == 1
    recipe = quantize_int8(path, tmp_path / "int8.onnx", _inputs(8, seed=1), arch="other")
    assert recipe["flat_resizes"] == 1 and recipe["pooled_convs"] == 0  # off by default: 4x the conv weights


def test_reduce_range_dense_gives_7_bit_weights_to_dense_layers_only(fp32_model: Path, tmp_path: Path) -> None:
    """7-bit weights cannot saturate x86's int16 pair sums (2 * 255 * 64 < 32768); depthwise keeps 8 bits."""
    out = tmp_path / "rr.onnx"
    recipe = quantize_int8(
        fp32_model, out, _inputs(8, seed=1), arch="small", recipe=QuantRecipe(reduce_range_dense=True)
    )
    graph = onnx.load(str(out)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    peaks = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in producer:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            peaks[(node.op_type, group > 1)] = int(np.abs(consts[producer[node.input[1]].input[0]]).max())
    assert peaks[("Conv", True)] == 127  # the depthwise conv: full 8 bits
    assert peaks[("Conv", False)] <= 64 and peaks[("Gemm", False)] <= 64
    assert recipe["reduced_range_weights"] == 4  # stem, left, right, head; fc: weight-only, also 7 bits
    held_out = _inputs(16, seed=2)
    assert (_run(fp32_model, held_out).argmax(1) == _run(out, held_out).argmax(1)).mean() >= 0.9


def test_weight_only_gemm_computes_in_fp32_on_int8_weights(fp32_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "wo.onnx"
    recipe = quantize_int8(
        fp32_model, out, _inputs(8, seed=1), arch="small", recipe=QuantRecipe(weight_only_op_types=("Gemm",))
    )
    assert recipe["weight_only"] == 1
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    weight_dq = producer[gemm.input[1]]
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert weight_dq.op_type == "DequantizeLinear" and consts[weight_dq.input[0]].dtype == np.int8  # INT8 in the file
    assert not any(gemm.output[0] in n.input and n.op_type == "QuantizeLinear" for n in graph.node)  # float logits
    held_out = _inputs(16, seed=2)
    assert (_run(fp32_model, held_out).argmax(1) == _run(out, held_out).argmax(1)).mean() >= 0.9
