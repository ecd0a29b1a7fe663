"""A timm classifier cut in two between its stages: a frozen trunk and a trainable tail sharing its modules.

Training caches the trunk's output once per image view, so the head (and optionally the last stage(s))
train for many epochs at the cost of the tail alone. The cut is generic over the timm families the
toolchain builds (EfficientNet, MobileNetV3, GhostNet/V2): their ``forward_features`` runs the children
registered before ``blocks`` (the stem), then ``blocks``, then whatever follows; ``forward_head`` pools
and classifies. ``tests/modelzoo/test_modelzoo_train.py`` checks ``tail(trunk(x)) == model(x)`` for every
architecture. The tail shares the model's modules, so training it trains the model itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edge_node.errors import BundleError

__all__ = ["Split", "split_model"]


class Split:
    """``trunk(x)`` -> stage output; ``tail(h)`` -> logits; ``features(h)`` -> pooled pre-logit features."""

    def __init__(self, model: nn.Module, trunk: nn.Module, tail: nn.Module, tail_stages: int) -> None:
        self.model = model
        self.trunk = trunk
        self.tail = tail
        self.tail_stages = tail_stages

    def features(self, h: torch.Tensor) -> torch.Tensor:
        tail = self.tail
        return tail.forward_head(tail.forward_features(h), pre_logits=True)  # type: ignore[operator,no-any-return]

    def head(self) -> nn.Linear:
        classifier = self.model.get_classifier()  # type: ignore[operator]
        if not isinstance(classifier, nn.Linear):
            raise BundleError(f"{type(self.model).__name__}'s classifier is a {type(classifier).__name__}, not Linear")
        return classifier

    def tail_parameters(self) -> list[nn.Parameter]:
        """The last stages' and the head's own parameters (what fine-tuning trains)."""
        return [p for p in self.tail.parameters() if p.requires_grad]


def split_model(model: nn.Module, tail_stages: int) -> Split:
    """Cut ``model`` before its last ``tail_stages`` entries of ``model.blocks`` (1 <= tail_stages < len)."""
    blocks = getattr(model, "blocks", None)
    names = list(model._modules)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "forward_head"):
        raise BundleError(f"{type(model).__name__} is not a timm model with 'blocks' stages; cannot train it here")
    if not 1 <= tail_stages < len(blocks):
        raise BundleError(f"--finetune-stages must be between 1 and {len(blocks) - 1}, got {tail_stages}")
    stem = names[: names.index("blocks")]
    cut = len(blocks) - tail_stages
    stem_modules = [m for n in stem if (m := model._modules[n]) is not None]
    trunk = nn.Sequential(*stem_modules, *blocks[:cut])
    tail = copy.copy(model)  # a shallow copy: same submodules, own registry of children
    tail._modules = dict(model._modules)
    for n in stem:
        setattr(tail, n, nn.Identity())
    tail.blocks = nn.Sequential(*blocks[cut:])
    return Split(model, trunk, tail, tail_stages)
