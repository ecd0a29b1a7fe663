"""From a bundle and the model settings to a checked, loaded model: what start-up and OTA both do."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from edge_node import memory
from edge_node.bundle import Bundle
from edge_node.capture.base import Frame
from edge_node.config import ModelConfig
from edge_node.vision.isolated import choose_isolated
from edge_node.vision.model import Model
from edge_node.vision.selection import Choice, settled
from edge_node.vision.variants import Loaded

__all__ = ["load", "select_model"]

log = logging.getLogger(__name__)


def select_model(
    bundle: Bundle,
    cfg: ModelConfig,
    *,
    resolution: int,
    frame: Frame | None = None,
    cache: Path | None = None,
    strict: bool = False,
) -> tuple[Model, Choice]:
    """The files of ``bundle`` that serve with ``cfg`` on this device (checked and, for ``auto`` settings,
    measured here), and the decision behind it. ``resolution`` is what the mode asks for; ``cache`` remembers
    decisions; ``strict`` refuses a bundle none of whose files is accurate enough here (for updates). What
    needs checking or timing runs in a child process, so the node keeps only the runtime it serves."""
    choice = settled(bundle, cfg, cache=cache, strict=strict) or choose_isolated(
        bundle, cfg, resolution=resolution, frame=frame, cache=cache, strict=strict
    )
    c = choice.candidate
    model = Model(
        bundle,
        runtime=c.runtime,
        precision=c.precision,
        workers=c.workers,
        threads=c.threads,
        top_k=cfg.top_k,
        spin=cfg.spin,
    )
    return model, choice


def load(
    model: Model, *, check: Sequence[int], keep: int, frame: Frame | None = None, choice: Choice | None = None
) -> Loaded:
    """Build and check ``check`` (resolutions, in order) on ``frame``; keep the first ``keep`` of them loaded.

    Raises InferenceError for the first resolution that does not load or misbehaves. The others are dropped as
    soon as they passed, so checking every resolution of a new model costs the memory of one at a time.
    """
    loaded = Loaded(model, choice=choice)
    for resolution in check:
        variant = model.build(resolution)
        variant.check(frame)
        if len(loaded.variants) < keep:
            loaded.variants[resolution] = variant
        del variant
    memory.trim()
    return loaded
