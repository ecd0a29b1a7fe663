"""From the settings and a bundle to a ``Node`` ready to run, without blocking the event loop.

The device choice (a child process that may time every runtime for minutes on a first start) and loading the
serving resolution's sessions run in a worker thread, so the embedded broker and anything else on the loop
keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge_node import memory
from edge_node.bundle import Bundle
from edge_node.config import Settings
from edge_node.node.app import Node, NodeLink
from edge_node.ota.store import BundleStore
from edge_node.vision.loading import load, select_model
from edge_node.vision.modes import MODE_RESOLUTION, ModeController
from edge_node.vision.pipeline import Loaded
from edge_node.wire import Prediction

__all__ = ["build", "load_serving"]


def tune_process() -> None:
    """Few malloc arenas and a fixed mmap threshold, before sessions are built (edge_node/memory.py)."""
    memory.limit_arenas(2)
    memory.fix_mmap_threshold()


def load_serving(settings: Settings, bundle: Bundle) -> tuple[Loaded, ModeController]:
    """Blocking: choose what serves on this device (remembered in the state directory) and build only the
    resolution the mode asks for; the others are built when a mode needs them."""
    cfg = settings.model
    model, choice = select_model(
        bundle, cfg, resolution=MODE_RESOLUTION.get(settings.mode, 224), cache=Node.device_cache(settings)
    )
    controller = ModeController(settings.auto, model.resolutions, mode=settings.mode, workers=model.workers)
    loaded = load(model, check=[model.nearest(controller.resolution)], keep=cfg.sessions, choice=choice)
    return loaded, controller


async def build(
    settings: Settings,
    bundle: Bundle,
    *,
    model_source: str = "active",
    store: BundleStore | None = None,
    on_prediction: Callable[[Prediction], None] | None = None,
    link: NodeLink | None = None,
) -> Node:
    tune_process()
    loaded, controller = await asyncio.to_thread(load_serving, settings, bundle)
    return Node(
        settings, loaded, controller, model_source=model_source, store=store, on_prediction=on_prediction, link=link
    )
