"""The serving model's loaded variants: which one a frame is prepared on, what to build next, what to let go.

At most ``keep`` resolutions stay loaded (the wanted one first, then the one serving). A resolution that is not
loaded yet is queued for the pipeline's one builder thread, and frames keep flowing on what is loaded meanwhile;
a resolution that failed to load is not asked for again until the mode or the model changes. What is let go is
only weakly referenced from here: a job prepared on it still holds it, and once the last such job is done its
memory is handed back to the OS (:mod:`edge_node.memory`, by the builder thread).

Not locked by itself: the pipeline calls everything but :meth:`VariantCache.next_build` and
:meth:`VariantCache.wake` with its own lock held, the lock that also guards the mode, so that a frame's
resolution and its variant are decided together.
"""

from __future__ import annotations

import queue
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge_node.vision.model import Model, Variant

if TYPE_CHECKING:
    from edge_node.vision.choice import Choice

__all__ = ["Loaded", "VariantCache"]


@dataclass
class Loaded:
    """A model and the variants built for it. A swap hands one in and hands the previous one back.

    ``choice`` is why this model's runtime, precision and workers were chosen, carried along for the node's
    state; the pipeline does not look at it."""

    model: Model
    variants: dict[int, Variant] = field(default_factory=dict)
    choice: Choice | None = None


class VariantCache:
    """The serving :class:`Loaded` and the bookkeeping of its builds; see the module docstring for locking."""

    def __init__(self, loaded: Loaded, *, keep: int = 1) -> None:
        self.loaded = loaded
        self._keep = max(1, keep)
        self._builds: queue.SimpleQueue[tuple[Model, int] | None] = queue.SimpleQueue()
        self._building: set[tuple[int, int]] = set()  # (id(model), resolution) queued or being built
        self._failed: dict[tuple[int, int], str] = {}
        self._retired: list[weakref.ref[Variant]] = []

    def pick(self, wanted: int, serving: int | None) -> Variant | None:
        """The variant to prepare a frame on: the wanted resolution's if it is loaded; otherwise ask the builder
        for it and keep serving what is loaded, so a switch never stalls the stream."""
        model = self.loaded.model
        resolution = wanted if wanted in model.resolutions else model.nearest(wanted)
        variants = self.loaded.variants
        if resolution in variants:
            return variants[resolution]
        key = (id(model), resolution)
        if key not in self._building and key not in self._failed:
            self._building.add(key)
            self._builds.put((model, resolution))
        if serving in variants:
            return variants[serving]
        return next(iter(variants.values()), None)

    def swap(self, loaded: Loaded) -> Loaded:
        """Serve ``loaded`` from now on; returns the previous one (call :meth:`evict` once the mode knows the
        new model's resolutions)."""
        old, self.loaded = self.loaded, loaded
        self._failed.clear()
        return old

    def forget_failures(self) -> None:
        """Let resolutions that failed to load be tried again (an operator's mode switch, a swap)."""
        self._failed.clear()

    def evict(self, wanted: int, serving: int | None) -> None:
        """Keep at most ``keep`` variants: the wanted resolution's first, then the one serving."""
        variants = self.loaded.variants
        if len(variants) <= self._keep:
            return
        nearest = self.loaded.model.nearest(wanted)
        order = sorted(variants, key=lambda r: (r != nearest, r != serving))
        for resolution in order[self._keep :]:
            self._retire(variants.pop(resolution))

    def retire_all(self, loaded: Loaded) -> None:
        """Let go of every variant of ``loaded`` (a model swapped out, or the pipeline stopping)."""
        for variant in loaded.variants.values():
            self._retire(variant)
        loaded.variants.clear()

    def reset_builds(self) -> None:
        """Forget queued builds and failures (a restart: the new threads start from nothing loaded)."""
        self._building.clear()
        self._failed.clear()

    def built(
        self, model: Model, resolution: int, variant: Variant, *, wanted: int, serving: int | None, stopping: bool
    ) -> None:
        """A build finished: serve it if its model still serves (and the threads are not stopping), else let it go."""
        self._building.discard((id(model), resolution))
        if model is self.loaded.model and not stopping:
            self.loaded.variants[resolution] = variant
            self.evict(wanted, serving)
        else:
            self._retire(variant)  # the model was swapped out while this was being built

    def build_failed(self, model: Model, resolution: int, error: str) -> None:
        self._building.discard((id(model), resolution))
        self._failed[(id(model), resolution)] = error

    def release_retired(self) -> bool:
        """True (once) when every variant let go is gone, so that its memory can be handed back to the OS."""
        if not self._retired or any(ref() is not None for ref in self._retired):
            return False
        self._retired.clear()
        return True

    # --- the builder thread's queue (thread-safe; no lock needed) -------------------------------------------

    def next_build(self, timeout: float) -> tuple[Model, int] | None:
        """The next (model, resolution) to build; None after ``timeout`` or a :meth:`wake`."""
        try:
            return self._builds.get(timeout=timeout)
        except queue.Empty:
            return None

    def wake(self) -> None:
        """Wake the builder thread, so that it sees its stop flag."""
        self._builds.put(None)

    def _retire(self, variant: Variant) -> None:
        self._retired.append(weakref.ref(variant))
