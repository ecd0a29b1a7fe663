"""The pipeline's listener: each frame's outcome is handed to the event loop, and a result that passes the
publish policy becomes a Prediction on ``predictions/``. The first result also tells systemd the node is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from edge_node.node.handoff import LoopHandoff
from edge_node.node.mapping import PredictionEncoder, prediction
from edge_node.node.outbox import Outbox
from edge_node.node.publish_policy import PublishGate
from edge_node.vision.pipeline import Failure, Output, Result
from edge_node.wire import Event, Prediction

__all__ = ["PredictionPublisher"]

log = logging.getLogger(__name__)


class PredictionPublisher:
    """``on_output`` and ``on_change`` are called on the pipeline's threads and only hand over; the rest runs on
    the loop, from ``start`` on (before it, outputs are dropped: nothing could send them)."""

    def __init__(
        self,
        node_id: str,
        gate: PublishGate,
        outbox: Outbox,
        *,
        ready: Callable[[], None],
        on_prediction: Callable[[Prediction], None] | None = None,
        watch: Callable[[Result], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.gate = gate
        self._outbox = outbox
        self._ready = ready
        self._on_prediction = on_prediction
        self._watch = watch  # the watch rules see every result, whatever the publish policy lets through
        self._encode = PredictionEncoder(node_id)
        self._clock = clock
        self._handoff: LoopHandoff[Output | None] | None = None
        self._changed: Callable[[], None] = lambda: None
        self._observe: Callable[[Output], None] | None = None
        self.last: Result | None = None  # what a snapshot is captioned with
        self.published = 0

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        changed: Callable[[], None],
        observe: Callable[[Output], None] | None = None,
    ) -> None:
        """Deliver on ``loop`` from now on; ``changed`` when what serves changes, ``observe`` sees every outcome
        (the OTA updater's health watch)."""
        self._changed = changed
        self._observe = observe
        self._handoff = LoopHandoff(loop, self._deliver)

    # --- the pipeline's threads ---------------------------------------------------------------------------

    def on_output(self, item: Output) -> None:
        if self._handoff is not None:
            self._handoff.put(item)

    def on_change(self) -> None:
        if self._handoff is not None:
            self._handoff.put(None)  # None: publish the state again

    # --- the loop -------------------------------------------------------------------------------------------

    def _deliver(self, item: Output | None) -> None:
        if item is None:
            self._changed()
            return
        if self._observe is not None:
            self._observe(item)
        if isinstance(item, Failure):
            if item.seq is None:  # a resolution could not be loaded: the mode's switch did not happen
                self._outbox.event(
                    Event(cmd="model_load_failed", ok=False, error=item.error, detail={"resolution": item.resolution})
                )
            return
        self._publish(item)

    def _publish(self, r: Result) -> None:
        if self.last is None:
            self._ready()
            best = r.classification.best
            log.info(
                "first inference done: %s (%.2f) at %dpx", best.label, best.confidence, r.classification.resolution
            )
        self.last = r
        if self._watch is not None:
            self._watch(r)
        if not self.gate.allow(r.classification.best.label, self._clock()):
            return
        if self._outbox.prediction(self._encode(r)):
            self.published += 1
        if self._on_prediction is not None:
            self._on_prediction(prediction(self.node_id, r))

    def caption(self) -> tuple[str | None, float | None]:
        """The latest result's label and confidence, for the snapshot's caption."""
        if self.last is None:
            return None, None
        best = self.last.classification.best
        return best.label, best.confidence
