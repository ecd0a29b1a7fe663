"""Why INT8 dense weights are 7-bit: ONNX Runtime's x86 U8S8 kernels without VNNI saturate, and the shipped file can't.

Without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime multiplies u8 activations by s8 weights with VPMADDUBSW,
which adds each pair of products into a saturating int16: 255 * 127 * 2 = 64770 is clipped to 32767. VNNI
(VPDPBUSD) and ARM accumulate in int32 and are exact. 7-bit weights (|w| <= 64) can't saturate: 2 * 255 * 64 =
32640. The first test shows the kernel on this CPU; the second pins that the shipped demo file uses only
weights that can't saturate in those kernels (the depthwise kernels widen to 16 bits first and keep 8 bits).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_node.modelzoo.demo import open_demo_bundle
from edge_node.runtimes import open_session

CHANNELS = 64


def _saturating_cpu() -> bool:
    """x86 whose flags have no VNNI: ONNX Runtime's U8S8 kernels there use VPMADDUBSW."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return not flags & {"avx512_vnni", "avx_vnni"}


def _one_by_one_conv(tmp_path: Path, weight: int) -> Path:
    """A QLinearConv 1x1 over CHANNELS inputs, activations u8 (zero point 0), weights ``weight``, output scale 64."""
    inits = [
        numpy_helper.from_array(np.full((1, CHANNELS, 1, 1), weight, np.int8), "w"),
        numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(np.array(1.0, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(np.array(8192.0, np.float32), "ys"),
        numpy_helper.from_array(np.array(0, np.uint8), "yz"),
        numpy_helper.from_array(np.array(1.0, np.float32), "ds"),
        numpy_helper.from_array(np.array(0, np.uint8), "dz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ds", "dz"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "saturation",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, CHANNELS, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 1, 1])],
        inits,
    )
    path = tmp_path / f"conv_{weight}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("weight", [127, 64])
def test_u8s8_conv_saturates_without_vnni_unless_weights_are_7_bit(tmp_path: Path, weight: int) -> None:
    session = open_session(_one_by_one_conv(tmp_path, weight), "onnxruntime", threads=1)
    got = float(session.run(np.full((1, CHANNELS, 1, 1), 255.0, np.float32)).ravel()[0])
    exact = round(255 * weight * CHANNELS / 8192)  # 127: 253 (fits u8); 64: 128
    saturated = round(32767 * CHANNELS / 2 / 8192)  # every pair clipped to int16: 128
    if weight == 127 and _saturating_cpu():
        assert got == saturated != exact
    else:
        assert got == exact


def test_the_shipped_int8_file_has_no_weights_that_saturate_avx2_kernels() -> None:
    bundle = open_demo_bundle()
    model = onnx.load(str(bundle.model_file(224, "int8")))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {n.output[0]: inits.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"}
    dense = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in weights:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        q = weights[node.input[1]]
        if q is None or group != 1:
            continue  # depthwise: ONNX Runtime widens to int16 before multiplying
        dense += 1
        assert q.dtype == np.int8 and int(np.abs(q.astype(np.int16)).max()) <= 64, node.name
    assert dense >= 20  # EfficientNet-Lite0's quantised 1x1 convs and the classifier
