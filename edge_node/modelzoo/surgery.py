"""PyTorch-side rewrites that keep a network mathematically the same but export and quantise better."""

from __future__ import annotations

import logging

import torch

__all__ = ["prepare_for_export"]

log = logging.getLogger(__name__)


def prepare_for_export(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """Return ``model`` in eval mode, rewritten for export; the outputs stay identical."""
    model.eval()
    log.debug("prepare_for_export(%s): no rewrites yet", arch)
    return model
