"""prepare_for_export: GhostNetV2 rewritten for INT8 speed computes the same function as timm's module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_node.modelzoo.export import export_onnx
from edge_node.modelzoo.quantize import quantize_int8
from edge_node.modelzoo.surgery import GhostExportOptions, prepare_for_export

timm = pytest.importorskip("timm")

RES = 64  # small, but every stage keeps an even size so the DFC gate upsample is exercised


@pytest.fixture(scope="module")
def ghostnetv2() -> torch.nn.Module:
    torch.manual_seed(0)
    model: torch.nn.Module = timm.create_model("ghostnetv2_100").eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so folding them is actually tested
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                assert bn.running_mean is not None and bn.running_var is not None  # tracked by default
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize(
    "options",
    [GhostExportOptions(), GhostExportOptions(pool_into_conv=True), GhostExportOptions(channel_multiple=1)],
    ids=["default", "pool-into-conv", "no-padding"],
)
def test_surgery_keeps_the_outputs(ghostnetv2: torch.nn.Module, options: GhostExportOptions) -> None:
    x = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = ghostnetv2(x)
        rewritten = prepare_for_export(ghostnetv2, "ghostnetv2_100", options)(x)
    scale = reference.abs().max().item()
    assert (rewritten - reference).abs().max().item() < 1e-5 * max(scale, 1.0)


def test_surgery_pads_depthwise_channels_and_leaves_the_input_alone(ghostnetv2: torch.nn.Module) -> None:
    before = {k: v.clone() for k, v in ghostnetv2.state_dict().items()}
    rewritten = prepare_for_export(ghostnetv2, "ghostnetv2_100")
    depthwise = [m for m in rewritten.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups % 16 == 0 for m in depthwise)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in rewritten.get_submodule("blocks").modules())
    after = ghostnetv2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a copy was rewritten, not the caller's


def test_other_architectures_are_only_put_in_eval_mode() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    out = prepare_for_export(net, "efficientnet_lite0")
    assert not out.training
    assert [type(m) for m in out.children()] == [torch.nn.Conv2d, torch.nn.BatchNorm2d]


def test_rewritten_ghostnetv2_exports_and_quantises(ghostnetv2: torch.nn.Module, tmp_path: Path) -> None:
    model = prepare_for_export(ghostnetv2, "ghostnetv2_100")
    fp32 = export_onnx(model, RES, tmp_path / "fp32.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, RES, RES), dtype=np.float32)
    with torch.no_grad():
        reference = ghostnetv2(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert np.abs(logits - reference).max() < 1e-4 * max(float(np.abs(reference).max()), 1.0)

    calibration = [rng.standard_normal((1, 3, RES, RES), dtype=np.float32) for _ in range(4)]
    recipe = quantize_int8(fp32, tmp_path / "int8.onnx", calibration, arch="ghostnetv2_100")
    assert recipe["shared_concat_inputs"] == 64  # both halves of all 32 Ghost modules
    assert recipe["reduce_mean_to_global_pool"] == 8  # the squeeze-excite means
    assert recipe["flat_resizes"] == 14 and recipe["pooled_convs"] == 14  # every DFC gate at 64 px
    sess8 = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    (q,) = sess8.run(None, {sess8.get_inputs()[0].name: x})
    assert q.shape == logits.shape and np.isfinite(q).all()
    assert (tmp_path / "int8.onnx").stat().st_size < 0.45 * fp32.stat().st_size  # 2x2 DFC convs: 4x weights
