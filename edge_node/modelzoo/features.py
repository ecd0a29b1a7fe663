"""The feature cache: every training view goes once through the frozen trunk, in ONNX Runtime.

On this project's 2-core CPU ONNX Runtime runs EfficientNet-Lite0's trunk ~5x faster than eager PyTorch
(docs/custom-models.md), so the trunk and the pooled features are exported once with the bundles' own
exporter, checked against PyTorch on real views, and then run per view. What is kept: the pooled features
(the head trains on those) and, when the last stage(s) are fine-tuned, the trunk's output as float16.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edge_node.errors import BundleError
from edge_node.modelzoo.backbone import Split
from edge_node.modelzoo.export import export_onnx
from edge_node.modelzoo.progress import step_progress
from edge_node.runtimes import open_session

__all__ = ["FeatureCache", "View", "export_feature_net", "extract"]

STAGE, FEATURES = "stage", "features"


@dataclass(frozen=True, slots=True)
class View:
    tensor: npt.NDArray[np.float32]  # (1, 3, R, R), made by the node's Preprocessor
    label: int
    image: int  # index of the source image


@dataclass(frozen=True)
class FeatureCache:
    features: npt.NDArray[np.float32]  # (N, D) pooled pre-logit features
    labels: npt.NDArray[np.int64]  # (N,)
    images: npt.NDArray[np.int64]  # (N,) source image of each view
    stage: npt.NDArray[np.float16] | None = None  # (N, C, h, w) trunk output, kept for fine-tuning

    def __len__(self) -> int:
        return len(self.labels)


class _FeatureNet(nn.Module):
    """(trunk output, pooled features): both halves registered, so the exporter sees every weight."""

    def __init__(self, split: Split) -> None:
        super().__init__()
        self.trunk = split.trunk
        self.tail = split.tail

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        tail: Any = self.tail  # a timm model: forward_features / forward_head
        return h, tail.forward_head(tail.forward_features(h), pre_logits=True)


def export_feature_net(
    split: Split, resolution: int, out: Path, check: Sequence[npt.NDArray[np.float32]], *, tolerance: float = 1e-3
) -> Path:
    """Export trunk + pooling to ``out`` and refuse it if ONNX Runtime disagrees with PyTorch on ``check``."""
    net = _FeatureNet(split).eval()
    export_onnx(net, resolution, out, output_names=(STAGE, FEATURES))
    sess = open_session(out, "onnxruntime", threads=2)
    worst = 0.0
    with torch.no_grad():
        for x in check:
            want = [t.numpy() for t in net(torch.from_numpy(x))]
            got = sess.run_outputs(x, (STAGE, FEATURES))
            worst = max(worst, *(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True)))
    if not np.isfinite(worst) or worst > tolerance:
        raise BundleError(f"the exported trunk differs from PyTorch by {worst:.3g} (tolerance {tolerance:.3g})")
    return out


def extract(
    net: Path, views: Iterable[View], *, total: int, keep_stage: bool, threads: int, progress: bool, what: str
) -> FeatureCache:
    """Run every view through the exported trunk; one ORT session, batch 1 as on the node."""
    sess = open_session(net, "onnxruntime", threads=threads)
    features: list[npt.NDArray[np.float32]] = []
    stages: list[npt.NDArray[np.float16]] = []
    labels: list[int] = []
    images: list[int] = []
    with step_progress(progress) as bar:
        task = bar.add_task(what, total=total)
        for view in views:
            stage, pooled = sess.run_outputs(view.tensor, (STAGE, FEATURES))
            features.append(np.asarray(pooled[0], np.float32))
            if keep_stage:
                stages.append(np.asarray(stage[0], np.float16))
            labels.append(view.label)
            images.append(view.image)
            bar.advance(task)
    if not labels:
        raise BundleError(f"no images for {what}")
    return FeatureCache(
        features=np.stack(features),
        labels=np.asarray(labels, np.int64),
        images=np.asarray(images, np.int64),
        stage=np.stack(stages) if keep_stage else None,
    )
