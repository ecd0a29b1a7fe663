"""Activate: a verified bundle loaded the way the pipeline serves, swapped in, then kept or swapped back.

The new model is chosen for this device (runtime and precision; the pipeline's worker count stays: a swap
happens between two frames, not between two sets of threads), every resolution is built and checked on a
real frame off the inference thread, and only then swapped in. The updater watches the new model's first
frames and calls :meth:`Activator.commit` or :meth:`Activator.revert`; until a commit the state file still
names the old bundle, so a crash at any point restarts on the last good one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from edge_node.bundle import Bundle
from edge_node.config import ModelConfig
from edge_node.ota.store import BundleStore, Slot

if TYPE_CHECKING:
    from edge_node.vision import Loaded, Pipeline

__all__ = ["Activator"]


class Activator:
    """Builds, swaps in, commits or reverts models on one running pipeline for the updater."""

    def __init__(
        self, pipeline: Pipeline, store: BundleStore, model_cfg: ModelConfig, *, device_cache: Path | None = None
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.model_cfg = model_cfg
        self.device_cache = device_cache  # where the node remembers what serves best on this device

    def build(self, bundle: Bundle) -> Loaded:
        """Load and check every resolution on a real frame (blocking: call it in a worker thread); keep what
        will serve. Raises EdgeError (AccuracyError when no file is accurate enough on this device)."""
        from edge_node.vision import load, select_model

        frame = self.pipeline.latest_frame()
        serving = self.pipeline.model
        cfg = self.model_cfg.model_copy(
            update={"workers": serving.workers, "threads": serving.workers * serving.threads}
        )
        model, choice = select_model(
            bundle, cfg, resolution=self.pipeline.resolution, frame=frame, cache=self.device_cache, strict=True
        )
        wanted = model.nearest(self.pipeline.resolution)
        order = [wanted, *(r for r in model.resolutions if r != wanted)]
        return load(model, check=order, keep=self.model_cfg.sessions, frame=frame, choice=choice)

    def swap_in(self, new: Loaded) -> Loaded:
        """Serve ``new`` from the next frame on; returns what served, for :meth:`commit` or :meth:`revert`."""
        return self.pipeline.swap(new)

    def revert(self, old: Loaded) -> None:
        """Serve ``old`` again and let the model that was on trial go."""
        self.pipeline.retire(self.pipeline.swap(old))

    async def commit(self, slot: Slot, bundle: Bundle, old: Loaded) -> None:
        """Make ``bundle`` in ``slot`` the one the node starts on, and let the old model go."""
        await asyncio.to_thread(self.store.commit, slot, bundle)
        self.pipeline.retire(old)

    async def switch(self, slot: Slot, bundle: Bundle, new: Loaded) -> None:
        """Serve ``new`` at once and commit it, without a trial (a rollback to a bundle that served before)."""
        self.pipeline.retire(self.pipeline.swap(new))
        await asyncio.to_thread(self.store.commit, slot, bundle)
