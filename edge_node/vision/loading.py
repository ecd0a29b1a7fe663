"""From a bundle and the model settings to a checked, loaded model: what start-up and OTA both do."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from edge_node import memory
from edge_node.bundle import Bundle
from edge_node.capture.base import Frame
from edge_node.config import ModelConfig
from edge_node.vision.model import Model
from edge_node.vision.pipeline import Loaded

__all__ = ["load", "select_model"]

log = logging.getLogger(__name__)


def select_model(bundle: Bundle, cfg: ModelConfig) -> Model:
    """The files of ``bundle`` the node serves with ``cfg`` (the configured precision, or what the bundle has)."""
    manifest = bundle.manifest
    precision = cfg.precision
    if not manifest.resolutions(precision):
        log.warning("bundle %s has no %s model; using %s", manifest.name, precision, manifest.precision)
        precision = manifest.precision
    return Model(
        bundle,
        runtime="onnxruntime",
        precision=precision,
        workers=cfg.workers,
        threads=max(1, cfg.threads // cfg.workers),
        top_k=cfg.top_k,
    )


def load(model: Model, *, check: Sequence[int], keep: int, frame: Frame | None = None) -> Loaded:
    """Build and check ``check`` (resolutions, in order) on ``frame``; keep the first ``keep`` of them loaded.

    Raises InferenceError for the first resolution that does not load or misbehaves. The others are dropped as
    soon as they passed, so checking every resolution of a new model costs the memory of one at a time.
    """
    loaded = Loaded(model)
    for resolution in check:
        variant = model.build(resolution)
        variant.check(frame)
        if len(loaded.variants) < keep:
            loaded.variants[resolution] = variant
        del variant
    memory.trim()
    return loaded
