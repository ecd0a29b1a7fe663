"""PyTorch-side rewrites that keep a network mathematically the same but export and quantise better.

GhostNet / GhostNetV2 (timm ``ghostnet*``) get an export form measured to run INT8 much faster on ONNX
Runtime's CPU kernels (docs/quantization.md has the figures):

* BatchNorm is folded into the convolutions (ORT would do it too; folding first lets us edit weights).
* Channel padding: every Ghost module's halves are padded with all-zero channels to a multiple of 16.
  ORT's fast symmetric INT8 depthwise kernel only runs when the channel count is a multiple of 16; the
  other depthwise path is ~3x slower per channel. Padded channels carry exact zeros (zero weights, zero
  bias, ``relu(0) = 0``, ``0 * gate = 0``) and the next convolution ignores them (zero weight columns),
  so the logits are those of the original network up to float summation order.
* Squeeze-excite: ``mean`` becomes a global average pool (quantisable as QLinearGlobalAveragePool) and
  ``hard_sigmoid(x) = clip(x / 6 + 0.5, 0, 1)`` has its affine part folded into the expand convolution,
  leaving a Clip that the quantiser merges into the requantisation.
* DFC attention, optional (off: it helps INT8 a little but slows the FP32 model): ``avg_pool2d(2)``
  followed by the 1x1 convolution is one 2x2 stride-2 convolution with the weights divided by four.

Everything else (timm's stem, head, pooling, classifier) is kept as is.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["GhostExportOptions", "prepare_for_export"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GhostExportOptions:
    """Switches for the GhostNet rewrites; the defaults are the measured best (docs/quantization.md)."""

    channel_multiple: int = 16  # pad Ghost module halves to this many channels; 1 = no padding
    se_rewrite: bool = True
    pool_into_conv: bool = False  # DFC branch: avg_pool2d(2) + 1x1 conv -> one 2x2 stride-2 conv


def prepare_for_export(model: torch.nn.Module, arch: str, options: GhostExportOptions | None = None) -> torch.nn.Module:
    """Return an eval-mode copy of ``model`` rewritten for export; its outputs equal the original's."""
    model = copy.deepcopy(model).eval()
    if arch.startswith("ghostnet"):
        opts = options or GhostExportOptions()
        with torch.no_grad():
            _rewrite_ghostnet(model, opts)
        log.info("prepare_for_export(%s): GhostNet rewrites %s", arch, opts)
    return model


# --- channel layouts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where the ``len(index)`` real channels of a tensor sit among its ``size`` physical channels.

    Physical channels not listed in ``index`` hold exact zeros.
    """

    index: tuple[int, ...]
    size: int

    @classmethod
    def plain(cls, channels: int) -> _Layout:
        return cls(tuple(range(channels)), channels)

    @classmethod
    def ghost(cls, init: int, multiple: int) -> _Layout:
        """Layout of ``cat([x1, x2])`` when each half of ``init`` channels is padded to ``multiple``."""
        half = -(-init // multiple) * multiple
        return cls(tuple(range(init)) + tuple(half + i for i in range(init)), 2 * half)

    def head(self, size: int) -> _Layout:
        """The first half of a ghost layout, i.e. the layout of ``x1`` alone."""
        return _Layout(self.index[: len(self.index) // 2], size)


def _dense(conv: Any, src: _Layout, dst: _Layout) -> nn.Conv2d:
    """A groups=1 convolution reading ``src`` and writing ``dst``; padded rows/columns are zero."""
    assert conv.groups == 1, "only dense convolutions can change layout"
    rows, cols = torch.tensor(dst.index), torch.tensor(src.index)
    return _scatter(conv, src.size, dst.size, 1, (rows.unsqueeze(1), cols.unsqueeze(0)), rows)


def _depthwise(conv: Any, layout: _Layout) -> nn.Conv2d:
    """A depthwise convolution over ``layout``: zero kernels on the padded channels."""
    assert conv.groups == conv.in_channels == conv.out_channels, "expected a depthwise convolution"
    idx = torch.tensor(layout.index)
    return _scatter(conv, layout.size, layout.size, layout.size, (idx,), idx)


def _scatter(
    conv: Any, cin: int, cout: int, groups: int, at: tuple[torch.Tensor, ...], rows: torch.Tensor
) -> nn.Conv2d:
    """A zero conv of the new shape with ``conv``'s weights written at ``at`` and its bias at ``rows``."""
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, groups=groups, bias=True)
    weight = torch.zeros_like(new.weight)
    bias = torch.zeros(cout)
    weight[at] = conv.weight
    if conv.bias is not None:
        bias[rows] = conv.bias
    new.weight.copy_(weight)
    assert new.bias is not None
    new.bias.copy_(bias)
    return new


def _conv(conv: Any, src: _Layout, dst: _Layout) -> nn.Conv2d:
    assert isinstance(conv, nn.Conv2d)
    if conv.groups == 1:
        return _dense(conv, src, dst)
    assert src == dst, "a depthwise convolution keeps its layout"
    return _depthwise(conv, src)


def _fold(conv: Any, bn: Any) -> nn.Conv2d:
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    folded: nn.Conv2d = fuse_conv_bn_eval(conv, bn)
    return folded


# --- export modules ------------------------------------------------------------------------------


class _Ghost(nn.Module):
    """GhostModule / GhostModuleV2 in export form (BN folded, halves padded, optional DFC gate)."""

    def __init__(self, ghost: Any, src: _Layout, opts: GhostExportOptions) -> None:
        super().__init__()
        primary, cheap = ghost.primary_conv, ghost.cheap_operation
        self.layout = _ghost_layout(ghost, opts)
        half = self.layout.head(self.layout.size // 2)
        self.primary = _conv(_fold(primary[0], primary[1]), src, half)
        self.cheap = _conv(_fold(cheap[0], cheap[1]), half, half)
        self.relu = not isinstance(primary[2], nn.Identity)
        short = getattr(ghost, "short_conv", None)
        self.short: nn.Sequential | None = None
        self.pool_into_conv = opts.pool_into_conv
        if short is not None:
            reduce = _fold(short[0], short[1])
            if self.pool_into_conv:  # mean of a 2x2 window, then a 1x1 conv == a 2x2 stride-2 conv
                pooled = nn.Conv2d(reduce.in_channels, reduce.out_channels, 2, 2, bias=True)
                pooled.weight.copy_(reduce.weight.repeat(1, 1, 2, 2) / 4.0)
                assert pooled.bias is not None and reduce.bias is not None
                pooled.bias.copy_(reduce.bias)
                reduce = pooled
            self.short = nn.Sequential(
                _conv(reduce, src, self.layout),
                _conv(_fold(short[2], short[3]), self.layout, self.layout),
                _conv(_fold(short[4], short[5]), self.layout, self.layout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        if self.relu:
            x1 = F.relu(x1)
        x2 = self.cheap(x1)
        if self.relu:
            x2 = F.relu(x2)
        out = torch.cat([x1, x2], dim=1)
        if self.short is None:
            return out
        pooled = x if self.pool_into_conv else F.avg_pool2d(x, kernel_size=2, stride=2)
        gate = torch.sigmoid(self.short(pooled))
        return out * _upsample_nearest(gate, out)


def _ghost_layout(ghost: Any, opts: GhostExportOptions) -> _Layout:
    init = ghost.primary_conv[0].out_channels
    if 2 * init != ghost.out_chs:
        raise ValueError(f"Ghost module with odd width {ghost.out_chs} is not rewritten")
    return _Layout.ghost(init, opts.channel_multiple)


def _upsample_nearest(gate: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """timm's ``F.interpolate(gate, size=like.shape[-2:], mode="nearest")``, exported as one Resize.

    The INT8 file gets that Resize in a form ORT runs faster (edge_node.modelzoo.quantize.flat_resizes);
    the FP32 file keeps it, as ORT's FP32 kernels are fastest with it. Alternatives measured slower
    (docs/quantization.md): DepthToSpace of four copies, two index Gathers, Reshape/Expand.
    """
    return F.interpolate(gate, size=like.shape[-2:], mode="nearest")


class _SqueezeExcite(nn.Module):
    """timm SqueezeExcite with a hard-sigmoid gate: GAP -> conv -> relu -> conv -> clip -> mul."""

    def __init__(self, se: Any, layout: _Layout) -> None:
        super().__init__()
        rd = se.conv_reduce.out_channels
        self.reduce = _dense(se.conv_reduce, layout, _Layout.plain(rd))
        expand = copy.deepcopy(se.conv_expand)
        expand.weight.div_(6.0)  # hard_sigmoid(z) = clip(z / 6 + 1/2, 0, 1)
        expand.bias.div_(6.0).add_(0.5)
        self.expand = _dense(expand, _Layout.plain(rd), layout)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s: torch.Tensor = self.expand(F.relu(self.reduce(self.pool(x))))
        return x * s.clamp(0.0, 1.0)


class _Bottleneck(nn.Module):
    """GhostBottleneck (V1/V2) in export form."""

    def __init__(self, block: Any, src: _Layout, opts: GhostExportOptions) -> None:
        super().__init__()
        self.ghost1 = _Ghost(block.ghost1, src, opts)
        mid = self.ghost1.layout
        self.conv_dw: nn.Module = nn.Identity()
        if block.conv_dw is not None:
            self.conv_dw = _conv(_fold(block.conv_dw, block.bn_dw), mid, mid)
        self.se: nn.Module = nn.Identity()
        if block.se is not None:
            if not opts.se_rewrite:
                raise ValueError("channel padding needs the squeeze-excite rewrite")
            self.se = _SqueezeExcite(block.se, mid)
        self.ghost2 = _Ghost(block.ghost2, mid, opts)
        self.layout = self.ghost2.layout
        self.shortcut: nn.Module = nn.Identity()
        if len(block.shortcut) > 0:
            sc = block.shortcut
            self.shortcut = nn.Sequential(
                _conv(_fold(sc[0], sc[1]), src, src), _conv(_fold(sc[2], sc[3]), src, self.layout)
            )
        elif src != self.layout:
            raise ValueError(f"identity shortcut between different layouts {src} -> {self.layout}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.ghost2(self.se(self.conv_dw(self.ghost1(x))))
        shortcut: torch.Tensor = self.shortcut(x)
        return y + shortcut


def _rewrite_ghostnet(model: Any, opts: GhostExportOptions) -> None:
    """Replace stem and blocks of a timm GhostNet in place; the head is left alone."""
    from timm.models.ghostnet import GhostBottleneck

    stem = _fold(model.conv_stem, model.bn1)
    layout = _Layout.plain(stem.out_channels)
    first = model.blocks[0][0]
    if len(first.shortcut) == 0:  # identity shortcut: the stem must write the first block's layout
        layout = _ghost_layout(first.ghost2, opts)
    model.conv_stem = _dense(stem, _Layout.plain(stem.in_channels), layout)
    model.bn1 = nn.Identity()
    for stage in model.blocks:
        for i, block in enumerate(stage):
            if isinstance(block, GhostBottleneck):
                stage[i] = new = _Bottleneck(block, layout, opts)
                layout = new.layout
            else:  # the final ConvBnAct: 1x1 conv back to a plain layout
                conv = _fold(block.conv, block.bn1)  # BatchNormAct2d: keep its activation
                block.conv = _dense(conv, layout, _Layout.plain(conv.out_channels))
                block.bn1 = block.bn1.act
                layout = _Layout.plain(conv.out_channels)
